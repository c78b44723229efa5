"""Host recovery: when a mail server answers again, its mailboxes in back-off are made due soon.

A server that was down (restarted, unreachable, its TLS or auth back-end away) fails every
mailbox on it; each backs off on its own (up to the longest interval). When one sync to that
server works again, the others need not sit out their back-off: they are made due within
a few seconds to a minute, spread out so that the server is not hit by all of them at once.

Cheap on the hot path: a failure that may be the server's adds the server to a Redis set
(`HOSTS_KEY`); a success costs one SREM, which finds nothing unless that server had such
failures since it last answered. Redis away never fails a sync here: the mailboxes then wait
out their back-off, which is bounded by the longest interval anyway.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from flask import current_app
from redis.exceptions import RedisError
from sqlalchemy import func, select, update

from portal import runtime_settings
from portal.extensions import db
from portal.models import Mailbox
from portal.models.mailboxes import SYNCABLE
from portal.queue import get_redis
from portal.timeutil import utcnow

log = logging.getLogger(__name__)
HOSTS_KEY = "eis:recovery:hosts"
# The reasons that say "the server was not there", not "this mailbox has a problem": a
# mailbox failing on its own (protocol errors) keeps its back-off, and a throttled one waits
# as long as its provider asked.
RECOVERABLE = frozenset({"server_unreachable", "tls_error", "mailbox_unavailable"})
MAX_PER_RECOVERY = 5000  # a larger back-log is taken by the next success on the same host
SPREAD_PER_MAILBOX = timedelta(seconds=0.1)
SHORTEST_SPREAD = timedelta(seconds=5)
LONGEST_SPREAD = timedelta(seconds=60)
# Mailboxes linked over OAuth keep their provider's IMAP server; older rows may lack it.
PROVIDER_IMAP = {"microsoft": "EIS_MICROSOFT_IMAP_HOST", "google": "EIS_GOOGLE_IMAP_HOST"}


def host_of(mailbox: Mailbox) -> str | None:
    """The IMAP server a mailbox syncs from, as "host:port" (lower case)."""
    host = mailbox.imap_host
    if not host and mailbox.provider in PROVIDER_IMAP:
        host = current_app.config.get(PROVIDER_IMAP[mailbox.provider])
    if not host:
        return None
    return f"{host.strip().lower()}:{mailbox.imap_port or 993}"


def host_failed(mailbox: Mailbox, reason: str) -> None:
    """A sync failed and the mailbox backs off: remember its server if the server may be
    the cause. Called by state.record_failure."""
    if reason not in RECOVERABLE:
        return
    host = host_of(mailbox)
    if host is None:
        return
    try:
        get_redis().sadd(HOSTS_KEY, host)
    except RedisError as exc:
        log.warning("could not note %s for recovery (Redis: %s); its mailboxes wait out their back-off",
                    host, exc)


def host_answered(mailbox: Mailbox) -> int:
    """A sync of `mailbox` worked: if its server had mailboxes backing off because it was
    away, make them due soon, spread out. Returns how many were made due.

    Call it before the caller's commit (state.mark_synced does; so does the quiet poll): the
    rescheduling is part of the same transaction. On PostgreSQL rows locked by another
    transaction (a mailbox finishing its own sync right now) are skipped, never waited for."""
    host = host_of(mailbox)
    if host is None:
        return 0
    try:
        if not get_redis().srem(HOSTS_KEY, host):
            return 0  # the common case: nothing of this server is backing off
    except RedisError as exc:
        log.warning("host recovery skipped for %s (Redis: %s)", host, exc)
        return 0
    return _make_due_soon(mailbox, host)


def _make_due_soon(mailbox: Mailbox, host: str) -> int:
    name, _, port = host.rpartition(":")
    now = utcnow()
    longest = runtime_settings.longest_interval()
    rows = db.session.execute(
        select(Mailbox.id, Mailbox.next_sync_at).where(
            Mailbox.state.in_(SYNCABLE),
            Mailbox.reason.in_(RECOVERABLE),
            Mailbox.next_sync_at > now + SHORTEST_SPREAD,
            func.lower(Mailbox.imap_host) == name,
            Mailbox.imap_port == int(port),
            Mailbox.id != mailbox.id,
        ).order_by(Mailbox.next_sync_at, Mailbox.id).limit(MAX_PER_RECOVERY + 1)
        .with_for_update(skip_locked=True)  # PostgreSQL; SQLite serialises writers anyway
    ).all()
    if len(rows) > MAX_PER_RECOVERY:
        rows = rows[:MAX_PER_RECOVERY]
        try:
            get_redis().sadd(HOSTS_KEY, host)  # the rest at the next success on this server
        except RedisError:
            pass
    if not rows:
        return 0
    window = spread_window(len(rows), longest)
    step = window / len(rows)
    # In their order of due times: each one earlier than it was, none two at the same moment.
    db.session.execute(update(Mailbox), [
        {"id": mailbox_id, "next_sync_at": min(due, now + step * (i + 1))}
        for i, (mailbox_id, due) in enumerate(rows)
    ])
    log.info("%s answers again: %d mailboxes backing off on it are due within %.0f s",
             host, len(rows), window.total_seconds())
    return len(rows)


def spread_window(count: int, longest: timedelta) -> timedelta:
    """A few seconds for a handful of mailboxes, up to a minute for thousands, and never more
    than half the longest interval (the bound the fleet promises after an outage)."""
    window = min(max(SPREAD_PER_MAILBOX * count, SHORTEST_SPREAD), LONGEST_SPREAD)
    return min(window, longest / 2)
