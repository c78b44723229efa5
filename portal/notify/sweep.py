"""Finding who is owed an email, from the data (never from an in-memory hook), on every
scheduler tick: crash-safe, and nothing twice.

- A mailbox's **incident** is the MailboxStateChange that made it Problematic. A Problematic
  mailbox whose current incident has no notification gets one row (unique per incident), then
  its sending is queued. A mailbox reconnected before the sweep is not Problematic any more,
  so it is not notified; transient faults never make a mailbox Problematic before the
  admin's threshold, so nothing is sent for those that recover.
- **IT's digest**: from EIS_NOTIFY_DIGEST_HOUR of the organisation's day on, if any account
  has been Problematic for over 24 hours, one row per IT user and day.
- Rows still pending (their job lost with a killed worker or an emptied Redis) are queued
  again: the job id is deterministic, so a live job is never doubled.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from flask import current_app
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError

from portal.extensions import db
from portal.models import Mailbox, MailboxStateChange, Notification, User
from portal.models.mailboxes import PROBLEMATIC
from portal.models.notifications import IT_DIGEST, MAILBOX_PROBLEMATIC, PENDING
from portal.notify import config
from portal.notify.messages import DigestEntry, organisation_zone
from portal.queue import enqueue_notification
from portal.timeutil import utcnow

BATCH = 200
DIGEST_AFTER = timedelta(hours=24)
# Incidents older than this are not emailed to their owner when first seen (notifications
# just turned on, or off for a while): IT's digest covers them, without a flood of old news.
INCIDENT_MAX_AGE = timedelta(days=7)
IT_ROLE = "it"  # the role that manages the connected accounts (portal/web/it)


def sweep(now: datetime | None = None) -> dict:
    """One pass (the scheduler's leader calls it each tick); returns what it did."""
    if not config.enabled():
        return {"incidents": 0, "digests": 0, "queued": 0}
    now = now or utcnow()
    incidents = record_incidents(now)
    digests = record_digests(now)
    return {"incidents": incidents, "digests": digests, "queued": queue_pending()}


def made_problematic():
    """A state change that made a mailbox Problematic (not one that changed only the reason
    of a mailbox that already was: that is the same incident)."""
    return (MailboxStateChange.to_state == PROBLEMATIC) & or_(
        MailboxStateChange.from_state.is_(None), MailboxStateChange.from_state != PROBLEMATIC)


def incident_id_of(mailbox_id: int) -> int | None:
    """The id of the change that began the mailbox's latest incident."""
    return db.session.scalar(select(func.max(MailboxStateChange.id))
                             .where(MailboxStateChange.mailbox_id == mailbox_id, made_problematic()))


def _incidents(*entities, began_before: datetime | None = None, began_after: datetime | None = None):
    """A query of `entities` over every Problematic mailbox, its owner and its current incident."""
    latest = (select(func.max(MailboxStateChange.id)).where(MailboxStateChange.mailbox_id == Mailbox.id,
                                                            made_problematic())
              .correlate(Mailbox).scalar_subquery())
    query = (select(*entities)
             .join_from(Mailbox, User, User.id == Mailbox.user_id)
             .join(MailboxStateChange, MailboxStateChange.id == latest)
             .where(Mailbox.state == PROBLEMATIC))
    if began_before is not None:
        query = query.where(MailboxStateChange.at <= began_before)
    if began_after is not None:
        query = query.where(MailboxStateChange.at >= began_after)
    return query.order_by(MailboxStateChange.at, Mailbox.id)


def current_incidents(**when):
    """(Mailbox, owner, incident) of every Problematic mailbox, oldest incident first."""
    return db.session.execute(_incidents(Mailbox, User, MailboxStateChange, **when)).all()


def long_problematic(now: datetime) -> list[DigestEntry]:
    """The accounts Problematic for over 24 hours (what IT's digest lists)."""
    return [DigestEntry(mailbox=mailbox, owner=owner, since=incident.at)
            for mailbox, owner, incident in current_incidents(began_before=now - DIGEST_AFTER)]


def record_incidents(now: datetime) -> int:
    """A row for each current incident whose owner has none yet and wants emails."""
    owed = db.session.execute(_incidents(Mailbox.id, User.id, MailboxStateChange.id, began_after=now - INCIDENT_MAX_AGE)
                              .where(User.is_enabled, User.email_notifications)).all()
    if not owed:
        return 0
    told = set(db.session.scalars(select(Notification.state_change_id).where(
        Notification.kind == MAILBOX_PROBLEMATIC,
        Notification.state_change_id.in_([incident_id for _m, _o, incident_id in owed]))))
    return _record([Notification(kind=MAILBOX_PROBLEMATIC, dedupe_key=f"{MAILBOX_PROBLEMATIC}:{incident_id}",
                                 user_id=owner_id, mailbox_id=mailbox_id, state_change_id=incident_id)
                    for mailbox_id, owner_id, incident_id in owed if incident_id not in told][:BATCH])


def digest_day(now: datetime) -> str | None:
    """Today in the organisation's zone ('2026-12-07') once the digest hour has come; else None."""
    local = now.replace(tzinfo=timezone.utc).astimezone(organisation_zone())
    return local.date().isoformat() if local.hour >= int(current_app.config.get("EIS_NOTIFY_DIGEST_HOUR") or 0) \
        else None


def record_digests(now: datetime) -> int:
    """Today's digest row for each IT user who has none yet, when there is something to say."""
    day = digest_day(now)
    if day is None:
        return 0
    recipients = db.session.scalars(select(User).where(User.role == IT_ROLE, User.is_enabled,
                                                       User.email_notifications).order_by(User.id)).all()
    keys = {user.id: f"{IT_DIGEST}:{day}:{user.id}" for user in recipients}
    done = set(db.session.scalars(select(Notification.dedupe_key).where(Notification.dedupe_key.in_(keys.values()))))
    waiting = [user for user in recipients if keys[user.id] not in done]
    if not waiting or not long_problematic(now):
        return 0
    return _record([Notification(kind=IT_DIGEST, dedupe_key=keys[user.id], user_id=user.id, day=day)
                    for user in waiting])


def _record(notifications: list[Notification]) -> int:
    """Written in one transaction; if another scheduler wrote one of them first (the unique
    key), one by one, leaving theirs to them."""
    if not notifications:
        return 0
    db.session.add_all(notifications)
    try:
        db.session.commit()
        return len(notifications)
    except IntegrityError:
        db.session.rollback()
    written = 0
    for notification in notifications:
        db.session.add(notification)
        try:
            db.session.commit()
            written += 1
        except IntegrityError:
            db.session.rollback()
    return written


def queue_pending() -> int:
    """Queue the sending of every pending row (new ones, and any whose job was lost)."""
    ids = db.session.scalars(select(Notification.id).where(Notification.status == PENDING)
                             .order_by(Notification.id).limit(BATCH)).all()
    queued = 0
    for notification_id in ids:
        _job, created = enqueue_notification(notification_id)
        queued += int(created)
    return queued
