"""The mailbox state machine: the one place that writes a mailbox's state, reason and detail.

    pending --first sync--> active
    pending/active --refusal, or transient faults past the threshold--> problematic (+ reason)
    pending/active --a transient fault--> same state, with the reason and the server's words
                                          (shown as "retrying"; back-off before the next try)
    problematic --reconnect or resync--> active (pending if it never synced)
    any --delete--> disconnected (credentials wiped elsewhere, the address kept)

Every change of state or reason is kept in the state history (MailboxStateChange). The
caller commits, with its own change.
"""
from __future__ import annotations

from datetime import timedelta

from portal import runtime_settings
from portal.accounts import recovery
from portal.extensions import db
from portal.mail.errors import Classified
from portal.models import Mailbox, MailboxStateChange, User

# The states, named here for everyone who reads or compares them (the model holds the values).
from portal.models.mailboxes import ACTIVE as ACTIVE
from portal.models.mailboxes import DISCONNECTED as DISCONNECTED
from portal.models.mailboxes import PENDING as PENDING
from portal.models.mailboxes import PROBLEMATIC as PROBLEMATIC
from portal.models.mailboxes import SYNCABLE as SYNCABLE
from portal.scheduling import backoff_delay
from portal.timeutil import utcnow
from portal.webhooks import events

CONNECTED = (PENDING, ACTIVE, PROBLEMATIC)  # the states whose credentials are kept
APP_CREDENTIALS_INVALID = "app_credentials_invalid"
CONSENT_MISSING = "consent_missing"


def begin(mailbox: Mailbox, actor: User) -> None:
    """A newly linked mailbox: pending until its first sync, due now."""
    _change(mailbox, PENDING, actor=actor, first=True)
    mailbox.consecutive_failures = 0
    mailbox.next_sync_at = utcnow()


def resume(mailbox: Mailbox, actor: User | None) -> None:
    """Back to syncing after someone fixed the cause (reconnect, resync): a Problematic one
    active again (pending if it never synced); a retrying one keeps its reason until a sync
    works. Either way the failure count starts again and a sync is due now."""
    if mailbox.state not in SYNCABLE:
        _change(mailbox, ACTIVE if mailbox.last_success_at else PENDING, actor=actor)
    mailbox.consecutive_failures = 0
    mailbox.next_sync_at = utcnow()


def mark_synced(mailbox: Mailbox, next_sync_in: timedelta) -> None:
    """A sync succeeded: active, no reason left, the next one in `next_sync_in`. Its server
    answers, so mailboxes backing off on it are made due soon (accounts/recovery.py)."""
    now = utcnow()
    mailbox.last_sync_at = mailbox.last_success_at = now
    mailbox.consecutive_failures = 0
    if mailbox.state == PENDING or mailbox.reason:
        _change(mailbox, ACTIVE)
    mailbox.next_sync_at = now + next_sync_in
    recovery.host_answered(mailbox)


def mark_polled(mailbox: Mailbox, next_sync_in: timedelta, *, now=None) -> bool:
    """A quiet poll of a healthy mailbox succeeded: only its times move, in one guarded
    UPDATE (no state history, nothing to re-read). False if its state, reason or failures
    changed meanwhile (support, its owner, a Reconnect): the poll then changes nothing.
    The caller commits."""
    now = now or utcnow()
    table = Mailbox.__table__
    done = db.session.execute(
        table.update().where(table.c.id == mailbox.id, table.c.state.in_(SYNCABLE), table.c.reason.is_(None),
                             table.c.consecutive_failures == 0)
        .values(last_sync_at=now, last_success_at=now, next_sync_at=now + next_sync_in,
                recent_messages=mailbox.recent_messages, recent_messages_at=mailbox.recent_messages_at,
                updated_at=now)
    ).rowcount
    if done:
        recovery.host_answered(mailbox)  # one Redis call when nothing on its host backs off
    return bool(done)


def record_failure(mailbox: Mailbox, classified: Classified) -> None:
    """A sync failed: a refusal, or one transient fault too many (the admin's threshold),
    makes the mailbox Problematic; otherwise it keeps its state, shows the reason as
    "retrying" and backs off, never longer than the longest sync interval (a provider's own
    "retry after" excepted). Throttling is never counted: it is never Problematic by itself."""
    now = utcnow()
    mailbox.last_sync_at = now
    if mailbox.state not in SYNCABLE:
        return  # disconnected, or made Problematic, while it ran: leave it as it is
    if classified.reason != "throttled":
        mailbox.consecutive_failures += 1
    if classified.refusal or mailbox.consecutive_failures >= runtime_settings.get("problematic_after_failures"):
        mark_problematic(mailbox, classified.reason, classified.detail)
        return
    mailbox.reason, mailbox.detail = classified.reason, classified.detail
    mailbox.next_sync_at = now + backoff_delay(max(mailbox.consecutive_failures, 1),
                                               longest=runtime_settings.longest_interval(),
                                               retry_after=classified.retry_after)
    recovery.host_failed(mailbox, classified.reason)


def mark_problematic(mailbox: Mailbox, reason: str, detail: str | None, actor: User | None = None) -> None:
    """Problematic at once, with the reason and the provider's words: syncing stops until it
    is reconnected. Only a connected mailbox turns Problematic."""
    if mailbox.state == DISCONNECTED:
        return
    _change(mailbox, PROBLEMATIC, reason=reason, detail=detail, actor=actor)


def disconnect(mailbox: Mailbox, actor: User) -> None:
    """Deleted by its owner: nothing is synced again; the address stays internal."""
    mailbox.disconnected_at = utcnow()
    _change(mailbox, DISCONNECTED, actor=actor)


def _change(mailbox: Mailbox, state: str, *, reason: str | None = None, detail: str | None = None,
            actor: User | None = None, first: bool = False) -> None:
    """Set the state; every change (and the first state) is kept in the state history."""
    if first or (mailbox.state, mailbox.reason) != (state, reason):
        events.mailbox_state_changed(mailbox, state, reason, detail, first=first)  # the CRM's webhooks
        db.session.add(MailboxStateChange(mailbox_id=mailbox.id, from_state=None if first else mailbox.state,
                                          to_state=state, reason=reason, detail=detail,
                                          actor_id=getattr(actor, "id", None)))
    mailbox.state, mailbox.reason, mailbox.detail = state, reason, detail
    if state in (PROBLEMATIC, DISCONNECTED):
        mailbox.next_sync_at = None
