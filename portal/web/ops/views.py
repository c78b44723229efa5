"""/healthz, /readyz and /metrics: no sign-in, no session, no CSRF (GET only); the security
headers as on every answer, and never stored by a cache.

- /healthz: the process answers (200 "ok"); it touches neither the database nor Redis, so a
  restart is not triggered by an outage the process cannot fix.
- /readyz: the database answers `SELECT 1` and Redis a PING: 200, else 503 naming the part
  that failed (the details go to the log, not to an anonymous caller).
- /metrics: Prometheus's text format, with `Authorization: Bearer <EIS_METRICS_TOKEN>`. Closed
  (404, as for a page that does not exist) while the setting is unset, and for a missing or
  wrong token, so its existence tells nothing.
"""
import hmac
import logging

from flask import Blueprint, Response, abort, current_app, request
# The classic text format, which every Prometheus (2.x too) reads; generate_latest writes it.
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from redis import ConnectionPool, Redis
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from portal.extensions import db
from portal.queue import get_redis
from portal.web.ops import exposition

bp = Blueprint("ops", __name__)
log = logging.getLogger(__name__)
PROBE_TIMEOUT_SECONDS = 2  # a Redis that hangs makes /readyz fail, not hang with it


def _plain(body: str, status: int = 200) -> Response:
    response = Response(body, status=status, mimetype="text/plain")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/healthz")
def healthz():
    return _plain("ok\n")


@bp.get("/readyz")
def readyz():
    failed = [part for part, check in (("database", _database_answers), ("redis", _redis_answers)) if not check()]
    if failed:
        return _plain("".join(f"{part}: unreachable\n" for part in failed), 503)
    return _plain("ready\n")


def _database_answers() -> bool:
    try:
        db.session.execute(text("SELECT 1"))
        return True
    except SQLAlchemyError:
        log.warning("/readyz: the database does not answer", exc_info=True)
        db.session.rollback()
        return False


def _redis_answers() -> bool:
    shared = get_redis().connection_pool
    pool = ConnectionPool(connection_class=shared.connection_class,
                          **{**shared.connection_kwargs, "socket_timeout": PROBE_TIMEOUT_SECONDS,
                             "socket_connect_timeout": PROBE_TIMEOUT_SECONDS})
    try:
        return bool(Redis(connection_pool=pool).ping())
    except (RedisError, OSError):
        log.warning("/readyz: Redis does not answer", exc_info=True)
        return False
    finally:
        pool.disconnect()


@bp.get("/metrics")
def metrics():
    token = current_app.config.get("EIS_METRICS_TOKEN")
    if not token or not _bearer_matches(token):
        abort(404)
    response = Response(exposition.render(), content_type=CONTENT_TYPE_PLAIN_0_0_4)
    response.headers["Cache-Control"] = "no-store"
    return response


def _bearer_matches(token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return False
    return hmac.compare_digest(given.strip().encode(), str(token).encode())
