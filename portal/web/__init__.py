"""Blueprints, error pages, the role checks every route goes through."""
from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from portal.extensions import csrf, login_manager


# One blueprint package per area, each exposing `bp`.
BLUEPRINTS = ("auth", "main", "mailboxes", "customers", "support", "it", "admin", "oauth", "send")


def init_app(app: Flask) -> None:
    import importlib

    from portal.web.api import bp as api_bp

    for name in BLUEPRINTS:
        app.register_blueprint(importlib.import_module(f"portal.web.{name}").bp)
    app.register_blueprint(api_bp, url_prefix="/api/v1")
    csrf.exempt(api_bp)  # the API takes bearer tokens only, never the session cookie

    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please sign in to continue."
    login_manager.session_protection = "strong"

    @login_manager.user_loader
    def load_user(session_id: str):
        """The session's user, while enabled and while the session's generation is theirs."""
        from portal.extensions import db
        from portal.models import User

        user_id, _, generation = session_id.partition(".")
        if not (user_id.isdigit() and generation.isdigit()) or int(user_id) > 2**31 - 1:
            return None
        user = db.session.get(User, int(user_id))
        if user is None or not user.is_enabled or (user.session_generation or 0) != int(generation):
            return None
        return user

    @app.before_request
    def note_last_seen():
        """Users.last_seen_at, written at most once a minute per user (the scheduler syncs the
        mailboxes of people using the portal more often)."""
        from flask_login import current_user

        if request.endpoint in (None, "static") or request.path.startswith("/api/"):
            return
        if current_user.is_authenticated:
            from portal.web.presence import note_seen

            note_seen(current_user)

    from portal.web import filters
    from portal.web.nav import nav_for

    filters.init_app(app)
    app.jinja_env.globals["nav_for"] = nav_for

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if request.path.startswith("/api/"):
            from portal.web.api.errors import api_error

            return api_error(exc.code or 500, _error_code(exc.code), exc.description or exc.name)
        template = "errors/403.html" if exc.code == 403 else "errors/error.html"
        return render_template(template, error=exc), exc.code

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception):
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        if request.path.startswith("/api/"):
            return jsonify(error="internal_error", message="Something went wrong on our side; it was logged."), 500
        return render_template("errors/error.html", error=None), 500

    @app.after_request
    def security_headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "frame-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'",
        )
        return response


def _error_code(status: int | None) -> str:
    return {
        400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
        405: "method_not_allowed", 409: "conflict", 413: "too_large", 415: "unsupported_media_type",
        422: "invalid", 429: "too_many_requests",
    }.get(status or 500, "error")
