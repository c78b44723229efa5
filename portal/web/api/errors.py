"""The API's errors: raised anywhere in an API view, answered as JSON by the blueprint."""
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
