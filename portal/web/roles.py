"""Role checks. Every page route names the roles that may use it; admins may use all."""
from functools import wraps

from flask import abort
from flask_login import current_user, login_required

ALL_ROLES = ("rep", "support", "it", "admin")


def roles_required(*roles: str):
    allowed = set(roles) | {"admin"}

    def decorator(view):
        @wraps(view)
        @login_required
        def wrapped(*args, **kwargs):
            if current_user.role not in allowed:
                abort(403, description="Your role does not give access to this page.")
            return view(*args, **kwargs)

        wrapped.allowed_roles = frozenset(allowed)
        return wrapped

    return decorator


def has_role(user, *roles: str) -> bool:
    return user.is_authenticated and (user.role in roles or user.role == "admin")
