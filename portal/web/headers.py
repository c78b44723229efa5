"""The headers every answer carries: no sniffing, no framing by others, no referrer to other
sites, and a Content Security Policy that allows scripts, styles and forms from this origin
only; signed-in pages and API answers are never stored by a browser or a proxy
(Cache-Control: no-store). With EIS_HTTPS the portal says it is served over HTTPS: Secure
cookies, HSTS, and https in the links it builds (also behind a TLS-terminating proxy)."""
from flask import Flask, current_app, request
from flask_login import current_user

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "frame-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'"
)


HSTS = "max-age=31536000; includeSubDomains"


def init_app(app: Flask) -> None:
    if app.config.get("EIS_HTTPS"):
        app.config.update(SESSION_COOKIE_SECURE=True, REMEMBER_COOKIE_SECURE=True, PREFERRED_URL_SCHEME="https")
        app.wsgi_app = _ServedOverHttps(app.wsgi_app)
    app.after_request(security_headers)


class _ServedOverHttps:
    """The deployment is reached over HTTPS (maybe through a proxy that speaks HTTP to us):
    the links the portal builds and its cookies say so. Set only by EIS_HTTPS, never taken
    from a client's X-Forwarded-Proto."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        environ["wsgi.url_scheme"] = "https"
        return self.wsgi_app(environ, start_response)


def security_headers(response):
    if request.path.startswith("/api/") or current_user.is_authenticated:
        response.headers["Cache-Control"] = "no-store"
    if current_app.config.get("EIS_HTTPS"):
        response.headers.setdefault("Strict-Transport-Security", HSTS)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    return response
