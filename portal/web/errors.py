"""Error pages and API error answers: an HTTP error is a page for people and `{error,
message}` JSON under /api/; anything unexpected is logged and answered without a traceback."""
from flask import Flask, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from portal.web.api.errors import api_error

ERROR_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "too_large", 415: "unsupported_media_type",
    422: "invalid", 429: "too_many_requests",
}


def init_app(app: Flask) -> None:
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected_error)


def http_error(exc: HTTPException):
    if exc.response is not None:  # the view's own answer (a rate limit's page, say)
        return exc.response
    if request.path.startswith("/api/"):
        return api_error(exc.code or 500, ERROR_CODES.get(exc.code or 500, "error"), exc.description or exc.name)
    template = "errors/403.html" if exc.code == 403 else "errors/error.html"
    return render_template(template, error=exc), exc.code


def unexpected_error(exc: Exception):
    current_app.logger.exception("unhandled error on %s %s", request.method, request.path)
    if request.path.startswith("/api/"):
        return jsonify(error="internal_error", message="Something went wrong on our side; it was logged."), 500
    return render_template("errors/error.html", error=None), 500
