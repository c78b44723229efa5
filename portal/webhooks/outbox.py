"""The outbox: an event is written in the same transaction as the change it describes, with
one pending delivery for each enabled endpoint that takes its type. A crash after the commit
loses nothing (the scheduler's tick finds due deliveries); a rollback takes the event with it.

No endpoint, no event: an event nobody can receive would only fill the table, and an endpoint
added later starts from the events after it (a receiver back-fills older data through the
API). So recording costs one small query per transaction when no endpoint is configured.

After the commit, each endpoint that got a delivery has its delivery job queued (best effort:
if Redis is away the tick queues it later); the change itself never waits for a receiver.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import timedelta

from flask import current_app
from redis.exceptions import RedisError
from sqlalchemy import delete, event, select
from sqlalchemy.orm import Session

from portal.extensions import db
from portal.models.webhooks import (
    ENVIRONMENT,
    EVENT_TYPES,
    PENDING,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from portal.queue import enqueue_webhook_delivery
from portal.timeutil import utcnow

log = logging.getLogger(__name__)
_TARGETS = "eis_webhook_targets"  # session.info: [(endpoint id, event types)] for this transaction
_LATER = "eis_webhook_later"  # events whose data is built just before the commit
_WAKE = "eis_webhook_wake"  # endpoints to wake after the commit


def new_event_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


def record(event_type: str, data: dict, *, mailbox_id: int | None = None) -> WebhookEvent | None:
    """Add an event to the caller's transaction (the caller commits, with its change); None when
    no enabled endpoint takes this type."""
    assert event_type in EVENT_TYPES, event_type
    session = db.session()
    endpoint_ids = [endpoint_id for endpoint_id, types in _targets(session) if event_type in types]
    if not endpoint_ids:
        return None
    now = utcnow()
    until = now + timedelta(hours=float(current_app.config.get("EIS_WEBHOOK_RETRY_HOURS") or 24))
    row = WebhookEvent(id=new_event_id(), type=event_type, created_at=now, mailbox_id=mailbox_id, data=data)
    session.add(row)
    for endpoint_id in endpoint_ids:
        session.add(WebhookDelivery(event=row, endpoint_id=endpoint_id, state=PENDING, attempts=0,
                                    next_attempt_at=now, retry_until=until, created_at=now))
    session.info.setdefault(_WAKE, set()).update(endpoint_ids)
    return row


def record_at_commit(event_type: str, build: Callable[[], dict], *, mailbox_id: int | None = None) -> None:
    """record(), with the data built just before the commit: for rows new in this transaction,
    whose ids only the flush gives (a sync batch's activities), without a flush per row."""
    session = db.session()
    if any(event_type in types for _id, types in _targets(session)):
        session.info.setdefault(_LATER, []).append((event_type, build, mailbox_id))


def wake(endpoint_id: int) -> None:
    """Queue this endpoint's delivery job once the caller's transaction commits (a Redeliver)."""
    db.session().info.setdefault(_WAKE, set()).add(endpoint_id)


def _targets(session: Session) -> list[tuple[int, tuple[str, ...]]]:
    """The enabled endpoints and their types, read once per transaction."""
    if _TARGETS in session.info:
        return session.info[_TARGETS]
    with session.no_autoflush:
        rows = session.execute(select(WebhookEndpoint.id, WebhookEndpoint.source, WebhookEndpoint.enabled,
                                      WebhookEndpoint.event_types)).all()
    from_environment = bool(current_app.config.get("EIS_WEBHOOK_URL"))
    targets = [(r.id, tuple(r.event_types or ())) for r in rows
               if r.enabled and (r.source != ENVIRONMENT or from_environment)]
    if from_environment and not any(r.source == ENVIRONMENT for r in rows):
        # The environment's endpoint gets its row on first use (the tick makes it too).
        endpoint = environment_endpoint()
        session.flush()
        targets.append((endpoint.id, tuple(EVENT_TYPES)))
    session.info[_TARGETS] = targets
    return targets


def environment_endpoint() -> WebhookEndpoint:
    """The row of EIS_WEBHOOK_URL (made if missing, its URL kept up to date for the pages); its
    secret is read from EIS_WEBHOOK_SECRET at each delivery, never stored."""
    url = current_app.config.get("EIS_WEBHOOK_URL")
    endpoint = db.session.scalar(select(WebhookEndpoint).where(WebhookEndpoint.source == ENVIRONMENT))
    if endpoint is None:
        endpoint = WebhookEndpoint(source=ENVIRONMENT, url=url, event_types=list(EVENT_TYPES), enabled=True,
                                   description="From the environment (EIS_WEBHOOK_URL)")
        db.session.add(endpoint)
    elif endpoint.url != url:
        endpoint.url = url
    return endpoint


def _before_commit(session: Session) -> None:
    later = session.info.pop(_LATER, None)
    if not later:
        return
    session.flush()  # the ids of the rows the events describe
    for event_type, build, mailbox_id in later:
        record(event_type, build(), mailbox_id=mailbox_id)


def _after_commit(session: Session) -> None:
    wake = session.info.pop(_WAKE, None)
    for endpoint_id in sorted(wake or ()):
        try:
            enqueue_webhook_delivery(endpoint_id)
        except (RedisError, RuntimeError, OSError):
            # The change is committed and its event with it: the scheduler's tick delivers it.
            log.warning("could not queue webhook delivery to endpoint %s", endpoint_id, exc_info=True)


def _after_transaction_end(session: Session, transaction) -> None:
    """Committed, rolled back or closed: nothing of this transaction's outbox is kept."""
    if transaction.parent is None:
        for key in (_TARGETS, _LATER, _WAKE):
            session.info.pop(key, None)


def init_app(_app) -> None:
    """Listen to every session's commits (once per process, whatever the number of apps)."""
    for name, listener in (("before_commit", _before_commit), ("after_commit", _after_commit),
                           ("after_transaction_end", _after_transaction_end)):
        if not event.contains(Session, name, listener):
            event.listen(Session, name, listener)


def prune(retention_days: int, *, batch: int = 1000, now=None) -> int:
    """Events older than the retention whose every delivery is final (delivered, or failed for
    good), with their deliveries and attempts: at most `batch` events a call, one short
    transaction (the scheduler calls it every tick, as it prunes sync runs). Returns how many
    events went. An event still waiting for a retry stays whatever its age."""
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    waiting = select(WebhookDelivery.event_seq).where(WebhookDelivery.state == PENDING)
    seqs = db.session.scalars(
        select(WebhookEvent.seq).where(WebhookEvent.created_at < cutoff, WebhookEvent.seq.not_in(waiting))
        .order_by(WebhookEvent.seq).limit(batch)).all()
    if seqs:
        deliveries = select(WebhookDelivery.id).where(WebhookDelivery.event_seq.in_(seqs))
        db.session.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(deliveries)))
        db.session.execute(delete(WebhookDelivery).where(WebhookDelivery.event_seq.in_(seqs)))
        db.session.execute(delete(WebhookEvent).where(WebhookEvent.seq.in_(seqs)))
    db.session.commit()
    return len(seqs)
