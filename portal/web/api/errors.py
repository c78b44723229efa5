from flask import jsonify


class ApiError(Exception):
    """Raised anywhere in an API view: becomes `{error, message}` with its status."""

    def __init__(self, status: int, code: str, message: str, **extra):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def api_error(status: int, code: str, message: str, **extra):
    response = jsonify(error=code, message=message, **extra)
    response.status_code = status
    return response


def register(bp) -> None:
    @bp.errorhandler(ApiError)
    def handle(exc: ApiError):
        from portal.extensions import db

        db.session.rollback()  # nothing half-written
        return api_error(exc.status, exc.code, exc.message, **exc.extra)
