"""Invitation links: a new user (or one who forgot the password) chooses a password.

The link is signed with the app's secret, lasts EIS_INVITE_DAYS, and names the user and a
fingerprint of their current password and session generation: once a password is set with
it (or the user is disabled and enabled, or another link was used), it no longer works.
"""
import hashlib

from flask import current_app, url_for
from itsdangerous import BadSignature, URLSafeTimedSerializer

from portal.extensions import db
from portal.models import User

SALT = "eis-invite"


def _signer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key, salt=SALT)


def _fingerprint(user: User) -> str:
    material = f"{user.password_hash or ''}|{user.session_generation or 0}|{user.is_enabled}"
    return hashlib.sha256(material.encode()).hexdigest()[:24]


def invite_url(user: User) -> str:
    token = _signer().dumps([user.id, _fingerprint(user)])
    base = current_app.config.get("EIS_BASE_URL")
    path = url_for("auth.invitation", token=token)
    return base.rstrip("/") + path if base else url_for("auth.invitation", token=token, _external=True)


def user_of(token: str) -> User | None:
    """The user a link is for, while it is valid; None otherwise."""
    days = int(current_app.config.get("EIS_INVITE_DAYS") or 7)
    try:
        user_id, fingerprint = _signer().loads(token, max_age=days * 86400)
    except (BadSignature, ValueError, TypeError):
        return None
    user = db.session.get(User, user_id) if isinstance(user_id, int) and 0 < user_id < 2**31 else None
    if user is None or not user.is_enabled or fingerprint != _fingerprint(user):
        return None
    return user
