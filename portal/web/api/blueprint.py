"""The API's blueprint: every request authenticated by a bearer token (but the OpenAPI
document's), and every ApiError answered as JSON `{error, message}` with nothing half-written."""
from datetime import timedelta

from flask import Blueprint, g, request
from sqlalchemy import select

from portal.extensions import db
from portal.models import ApiToken
from portal.models.users import hash_token
from portal.timeutil import utcnow
from portal.web.api.errors import ApiError, api_error

bp = Blueprint("api", __name__)

PUBLIC_ENDPOINTS = {"api.openapi"}
LAST_USED_EVERY = timedelta(minutes=1)


@bp.before_request
def authenticate():
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "Send an API token as 'Authorization: Bearer <token>'.")
    row = db.session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token.strip())))
    if row is None or not row.live or not row.user.is_enabled:
        raise ApiError(401, "unauthorized", "The API token is unknown, expired, revoked, or its user is disabled.")
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_EVERY:  # not a write per call
        row.last_used_at = now
        db.session.commit()
    g.api_user = row.user
    return None



@bp.errorhandler(ApiError)
def handle_api_error(exc: ApiError):
    db.session.rollback()  # nothing half-written
    return api_error(exc.status, exc.code, exc.message, **exc.extra)
