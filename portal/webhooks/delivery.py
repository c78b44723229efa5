"""Delivering one endpoint's events: the due deliveries in event order, at most
EIS_WEBHOOK_RATE_PER_SECOND requests a second, each recorded with its attempt.

- At least once: a delivery is marked delivered only after the receiver's 2xx is committed; a
  worker killed in between sends it again, with the same event id, for the receiver to drop.
- In order per mailbox: while an event of a mailbox waits for a retry, that mailbox's later
  events wait too (a state change is not delivered before the activities it explains).
- Retries: time-outs, connection errors, 5xx, 408 and 429 are retried after 30 s, 1, 2, 4 ...
  minutes (EIS_WEBHOOK_RETRY_FIRST_SECONDS, doubled, at most an hour) until 24 hours after the
  event (EIS_WEBHOOK_RETRY_HOURS); any other answer but 2xx is final, and so is a URL the
  host policy refuses.
- Rate-limited, not batched: each request carries one event, as the body the issue names;
  a back-fill is spread out instead (README "Webhooks" gives the figures).
"""
from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from datetime import timedelta

from flask import current_app
from sqlalchemy import or_, select
from sqlalchemy.orm import joinedload

from portal import crypto
from portal.extensions import db
from portal.models.audit import record as audit
from portal.models.webhooks import (
    DELIVERED,
    ENVIRONMENT,
    FAILED,
    PENDING,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from portal.queue import get_redis
from portal.timeutil import isoformat, utcnow
from portal.webhooks import outbox
from portal.webhooks.http import Answer, post
from portal.webhooks.signing import HEADER, header_value

RETRY_STATUSES = frozenset({408, 429})
BATCH = 100
MAX_BACKOFF_SECONDS = 3600
LOCK_PREFIX = "eis:webhooks:endpoint:"
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) end
return 0
"""


def lock_key(endpoint_id: int) -> str:
    return f"{LOCK_PREFIX}{endpoint_id}"


def lock_ttl() -> int:
    """Outlives one request (connect and answer) with room; a killed job's lock lapses then."""
    return int(2 * float(current_app.config.get("EIS_WEBHOOK_TIMEOUT_SECONDS") or 10)) + 5


def body_of(event: WebhookEvent) -> bytes:
    return json.dumps({"id": event.id, "type": event.type, "created_at": isoformat(event.created_at),
                       "data": event.data}, ensure_ascii=False, separators=(",", ":")).encode()


def is_active(endpoint: WebhookEndpoint) -> bool:
    return endpoint.enabled and (endpoint.source != ENVIRONMENT or bool(current_app.config.get("EIS_WEBHOOK_URL")))


def url_of(endpoint: WebhookEndpoint) -> str:
    return current_app.config["EIS_WEBHOOK_URL"] if endpoint.source == ENVIRONMENT else endpoint.url


def secret_of(endpoint: WebhookEndpoint) -> str:
    if endpoint.source == ENVIRONMENT:
        return current_app.config.get("EIS_WEBHOOK_SECRET") or ""
    return crypto.decrypt(endpoint.secret_encrypted) if endpoint.secret_encrypted else ""


def backoff(attempts: int) -> timedelta:
    first = float(current_app.config.get("EIS_WEBHOOK_RETRY_FIRST_SECONDS") or 0)
    return timedelta(seconds=min(first * 2 ** max(attempts - 1, 0), MAX_BACKOFF_SECONDS))


def outcome_of(status: int | None, refused: bool) -> str:
    if status is None:
        return FAILED if refused else "retry"
    if 200 <= status < 300:
        return DELIVERED
    if status >= 500 or status in RETRY_STATUSES:
        return "retry"
    return FAILED  # any other 4xx (and a redirect, which is never followed)


def attempt(delivery: WebhookDelivery, endpoint: WebhookEndpoint) -> str:
    """One POST of the delivery's event; the attempt and the delivery's new state are added to
    the session (the caller commits). Returns delivered, retry or failed."""
    event = delivery.event
    body = body_of(event)
    try:
        secret = secret_of(endpoint)
    except crypto.SecretError as exc:  # EIS_ENCRYPTION_KEYS lost its key: not sent unsigned; retried
        answer = Answer(status=None, excerpt=None, error=f"the endpoint's secret cannot be read: {exc}", duration_ms=0)
    else:
        headers = {HEADER: header_value(secret, body), "EIS-Event-Id": event.id, "EIS-Event-Type": event.type}
        answer = post(url_of(endpoint), body, headers)
    now = utcnow()
    outcome = outcome_of(answer.status, answer.refused)
    delivery.attempts += 1
    delivery.last_status, delivery.last_error = answer.status, answer.error
    if outcome == "retry" and now + backoff(delivery.attempts) > (delivery.retry_until or now):
        outcome = FAILED  # retried for EIS_WEBHOOK_RETRY_HOURS: given up
    if outcome == "retry":
        delivery.next_attempt_at = now + backoff(delivery.attempts)
    else:
        delivery.state, delivery.next_attempt_at, delivery.finished_at = outcome, None, now
    db.session.add(WebhookAttempt(delivery_id=delivery.id, at=now, status_code=answer.status, error=answer.error,
                                  response_excerpt=answer.excerpt, duration_ms=answer.duration_ms,
                                  outcome=outcome, redelivery=delivery.redelivery))
    delivery.redelivery = False
    return outcome


def deliver_due(endpoint_id: int, budget_seconds: float | None = None) -> dict:
    """Send this endpoint's due deliveries for at most `budget_seconds` (EIS_WEBHOOK_JOB_SECONDS).
    `more` in the result: due deliveries are left (the caller queues a continuation)."""
    redis = get_redis()
    token, key, ttl = uuid.uuid4().hex, lock_key(endpoint_id), lock_ttl()
    if not redis.set(key, token, nx=True, ex=ttl):
        return {"endpoint_id": endpoint_id, "skipped": "another job is delivering to this endpoint"}
    try:
        return _deliver(endpoint_id, budget_seconds, lambda: redis.eval(_RENEW, 1, key, token, ttl))
    finally:
        redis.eval(_RELEASE, 1, key, token)


def _deliver(endpoint_id: int, budget_seconds: float | None, renew) -> dict:
    endpoint = db.session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or not is_active(endpoint):
        return {"endpoint_id": endpoint_id, "skipped": "no such endpoint, or disabled"}
    config = current_app.config
    budget = float(budget_seconds if budget_seconds is not None else config.get("EIS_WEBHOOK_JOB_SECONDS") or 20)
    rate = float(config.get("EIS_WEBHOOK_RATE_PER_SECOND") or 0)
    interval = 1.0 / rate if rate > 0 else 0.0
    started, last_sent = time.monotonic(), None
    counts: Counter = Counter()
    held = _held_mailboxes(endpoint_id)
    retried: set[int] = set()  # not again in this job, however short the back-off
    out_of_time = False
    while not out_of_time:
        batch = _due(endpoint_id, held, retried)
        if not batch:
            break
        for delivery in batch:
            mailbox_id = delivery.event.mailbox_id
            if mailbox_id is not None and mailbox_id in held:
                continue
            if time.monotonic() - started >= budget:
                out_of_time = True
                break
            if last_sent is not None and interval:
                time.sleep(max(0.0, last_sent + interval - time.monotonic()))
            last_sent = time.monotonic()
            outcome = attempt(delivery, endpoint)
            db.session.commit()
            renew()
            counts[outcome] += 1
            if outcome == "retry":
                retried.add(delivery.id)
                if mailbox_id is not None:
                    held.add(mailbox_id)  # its later events wait for this one
    more = out_of_time and bool(_due(endpoint_id, held, retried, limit=1))
    db.session.commit()
    return {"endpoint_id": endpoint_id, "delivered": counts[DELIVERED], "retry": counts["retry"],
            "failed": counts[FAILED], "more": more, "seconds": round(time.monotonic() - started, 3)}


def _due(endpoint_id: int, held: set[int], retried: set[int], limit: int = BATCH) -> list[WebhookDelivery]:
    statement = (select(WebhookDelivery).join(WebhookEvent, WebhookEvent.seq == WebhookDelivery.event_seq)
                 .where(WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.state == PENDING,
                        WebhookDelivery.next_attempt_at <= utcnow())
                 .options(joinedload(WebhookDelivery.event)).order_by(WebhookEvent.seq).limit(limit))
    if held:
        statement = statement.where(or_(WebhookEvent.mailbox_id.is_(None), WebhookEvent.mailbox_id.not_in(held)))
    if retried:
        statement = statement.where(WebhookDelivery.id.not_in(retried))
    return list(db.session.scalars(statement).all())


def _held_mailboxes(endpoint_id: int) -> set[int]:
    """Mailboxes with an event waiting for its retry: their later events wait behind it."""
    return set(db.session.scalars(
        select(WebhookEvent.mailbox_id).distinct().join(WebhookDelivery, WebhookDelivery.event_seq == WebhookEvent.seq)
        .where(WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.state == PENDING,
               WebhookDelivery.next_attempt_at > utcnow(), WebhookEvent.mailbox_id.is_not(None))).all())


def due_endpoint_ids() -> list[int]:
    """Endpoints with a delivery due now (the scheduler's tick queues their jobs)."""
    return list(db.session.scalars(
        select(WebhookDelivery.endpoint_id).distinct().where(WebhookDelivery.state == PENDING,
                                                             WebhookDelivery.next_attempt_at <= utcnow())).all())


def is_locked(endpoint_id: int) -> bool:
    return bool(get_redis().exists(lock_key(endpoint_id)))


def redeliver(delivery: WebhookDelivery, actor) -> None:
    """An admin's Redeliver: the event is sent again at once, with the same id, and retried for
    another EIS_WEBHOOK_RETRY_HOURS if it fails. The caller commits; the job is queued then."""
    now = utcnow()
    delivery.state, delivery.next_attempt_at, delivery.finished_at = PENDING, now, None
    delivery.retry_until = now + timedelta(hours=float(current_app.config.get("EIS_WEBHOOK_RETRY_HOURS") or 24))
    delivery.redelivery = True
    audit("webhook_redelivered", actor, delivery.endpoint, event_id=delivery.event.id, delivery_id=delivery.id)
    outbox.wake(delivery.endpoint_id)
