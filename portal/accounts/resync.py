"""Resync: a Problematic mailbox goes back to syncing (after someone fixed the cause), an
active one is synced now. Used by the admin pages (one, a selection, all Problematic) and by
support's "Sync now"."""
from __future__ import annotations

from dataclasses import dataclass

from redis.exceptions import RedisError

from portal.accounts import state
from portal.extensions import db
from portal.models import Mailbox, User
from portal.models.audit import record
from portal.queue import enqueue_sync


@dataclass
class ResyncReport:
    queued: int = 0  # new sync jobs
    already: int = 0  # a sync job was already waiting or running
    skipped: int = 0  # disconnected: no credentials left to sync with
    unqueued: int = 0  # the queue could not be reached; the scheduler picks them up

    @property
    def asked(self) -> int:
        return self.queued + self.already + self.unqueued

    def sentence(self) -> str:
        parts = [f"Resync asked for {self.asked} mailbox{'es' if self.asked != 1 else ''}"]
        details = []
        if self.already:
            details.append(f"{self.already} already queued")
        if self.skipped:
            details.append(f"{self.skipped} disconnected, skipped")
        if self.unqueued:
            details.append(f"{self.unqueued} left to the scheduler: the queue could not be reached")
        return parts[0] + (f" ({'; '.join(details)})" if details else "") + "."


def resync(mailboxes: list[Mailbox], actor: User, trigger: str = "resync") -> ResyncReport:
    """Problematic ones back to active (pending if they never synced), then a sync job each.

    The state change and audit events commit before anything is enqueued, so a worker that
    picks the job at once finds the mailbox syncable; next_sync_at = now lets the scheduler
    queue it anyway if Redis cannot be reached now.
    """
    report = ResyncReport()
    targets = []
    for mailbox in mailboxes:
        if mailbox.state == state.DISCONNECTED:
            report.skipped += 1
            continue
        before = {"state": mailbox.state, "reason": mailbox.reason}
        state.resume(mailbox, actor)
        record("resync_asked", actor, mailbox, address=mailbox.address, before=before, trigger=trigger)
        targets.append(mailbox.id)
    db.session.commit()
    for mailbox_id in targets:
        try:
            _job, created = enqueue_sync(mailbox_id, trigger, actor.id)
        except (RedisError, OSError):
            report.unqueued += 1
            continue
        if created:
            report.queued += 1
        else:
            report.already += 1
    return report
