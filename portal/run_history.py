"""Sync history with a lifetime (the fleet's operational data, not the customers' email).

- A quiet poll (a scheduled sync that found nothing and changed nothing) is not a
  `sync_runs` row but a count in `sync_quiet_days`: one row per mailbox per UTC day.
- The runs that did something (logged or stored mail, failed, changed the mailbox's state,
  asked for by a person) are kept `EIS_RUN_RETENTION_DAYS` and pruned by the scheduler in
  small batches, with the quiet-day counts of the same age.
- How busy a mailbox is (which sets its next interval) is kept on the mailbox
  (`recent_messages`), recounted from the last day's runs only when a run saw mail or the
  count is over an hour old, so a quiet poll does not sum the history.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm.attributes import set_committed_value

from portal import runtime_settings
from portal.extensions import db
from portal.models import Mailbox, SyncQuietDay, SyncRun
from portal.scheduling import next_interval
from portal.timeutil import utcnow

RECOUNT_AFTER = timedelta(hours=1)
PRUNE_BATCH = 2000


def is_quiet(run: SyncRun) -> bool:
    """A scheduled run that succeeded and touched no message: worth a count, not a row."""
    return (run.trigger == "scheduled" and run.status == "succeeded" and not run.seen and not run.logged
            and not run.duplicates and not run.bad_messages)


def count_quiet(mailbox_id: int, *, imap_commands: int, seconds: float, at: datetime | None = None) -> None:
    """Add one quiet poll to the mailbox's count for the day (an upsert; the caller commits)."""
    at = at or utcnow()
    values = {"mailbox_id": mailbox_id, "day": at.date(), "polls": 1, "imap_commands": imap_commands,
              "seconds": seconds, "first_at": at, "last_at": at}
    insert = pg_insert if db.session.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = insert(SyncQuietDay).values(**values)
    table = SyncQuietDay.__table__
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.mailbox_id, table.c.day],
        set_={"polls": table.c.polls + 1, "imap_commands": table.c.imap_commands + imap_commands,
              "seconds": table.c.seconds + seconds, "last_at": at},
    )
    db.session.execute(stmt)


@dataclass(frozen=True)
class Intervals:
    """The admin's interval settings, read once for a batch of syncs, not once per poll."""
    min_minutes: float
    max_minutes: float

    @classmethod
    def current(cls) -> Intervals:
        return cls(runtime_settings.get("interval_min_minutes"), runtime_settings.get("interval_max_minutes"))


def next_sync_in(mailbox: Mailbox, intervals: Intervals | None = None, *, saw_mail: bool = False,
                 quiet: bool = False, now: datetime | None = None) -> timedelta:
    """When the mailbox syncs next: busier mailboxes and active owners sooner. `quiet`: the
    caller writes the mailbox itself (state.mark_polled's one UPDATE), so the recount is
    not an ORM change that would flush a second UPDATE."""
    now = now or utcnow()
    intervals = intervals or Intervals.current()
    if saw_mail or mailbox.recent_messages_at is None or mailbox.recent_messages_at < now - RECOUNT_AFTER:
        count = recent_messages(mailbox.id, now)
        if quiet:
            set_committed_value(mailbox, "recent_messages", count)
            set_committed_value(mailbox, "recent_messages_at", now)
        else:
            mailbox.recent_messages, mailbox.recent_messages_at = count, now
    owner = mailbox.owner
    active = bool(owner and owner.last_seen_at and owner.last_seen_at >= now - timedelta(hours=1))
    return next_interval(min_minutes=intervals.min_minutes, max_minutes=intervals.max_minutes,
                         recent_messages=mailbox.recent_messages, owner_active=active)


def recent_messages(mailbox_id: int, now: datetime | None = None) -> int:
    """Messages the last day's syncs saw (not the back-fill's): quiet polls saw none, so the
    kept runs hold the whole count."""
    since = (now or utcnow()) - timedelta(days=1)
    return int(db.session.scalar(
        select(func.coalesce(func.sum(SyncRun.seen), 0)).where(
            SyncRun.mailbox_id == mailbox_id, SyncRun.started_at >= since, SyncRun.trigger != "backfill")
    ) or 0)


def prune(retention_days: int, *, batch: int = PRUNE_BATCH, now: datetime | None = None) -> int:
    """Delete at most `batch` runs (and quiet-day counts) older than the retention, oldest
    first; one short transaction each, so the tables are never locked for long. Returns how
    many rows went; the scheduler calls it every tick until it returns 0. Running runs stay."""
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    ids = db.session.scalars(
        select(SyncRun.id).where(SyncRun.started_at < cutoff, SyncRun.status != "running")
        .order_by(SyncRun.started_at).limit(batch)
    ).all()
    removed = 0
    if ids:
        removed += db.session.execute(delete(SyncRun).where(SyncRun.id.in_(ids))).rowcount or 0
    old_days = db.session.execute(
        select(SyncQuietDay.mailbox_id, SyncQuietDay.day).where(SyncQuietDay.day < cutoff.date())
        .order_by(SyncQuietDay.day).limit(batch)
    ).all()
    for mailbox_id, day in old_days:
        removed += db.session.execute(delete(SyncQuietDay).where(
            SyncQuietDay.mailbox_id == mailbox_id, SyncQuietDay.day == day)).rowcount or 0
    db.session.commit()
    return removed


def quiet_days(mailbox_id: int, since: date | None = None) -> list[SyncQuietDay]:
    """The mailbox's quiet-poll counts, newest day first."""
    query = select(SyncQuietDay).where(SyncQuietDay.mailbox_id == mailbox_id)
    if since is not None:
        query = query.where(SyncQuietDay.day >= since)
    return list(db.session.scalars(query.order_by(SyncQuietDay.day.desc())))


@dataclass(frozen=True)
class QuietSummary:
    """A page's line for a day of quiet polls, between the runs."""
    day: date
    polls: int
    first_at: datetime
    last_at: datetime
    imap_commands: int

    quiet = True


def interleave(runs: list, days: list[SyncQuietDay]) -> list:
    """The runs (newest first) with each day's quiet polls placed where that day's last
    quiet poll falls among them; days older than the oldest run shown are left out (they
    belong to a later page)."""
    if not runs:
        return [QuietSummary(d.day, d.polls, d.first_at, d.last_at, d.imap_commands) for d in days]
    oldest = runs[-1].started_at
    summaries = [QuietSummary(d.day, d.polls, d.first_at, d.last_at, d.imap_commands)
                 for d in days if d.last_at >= oldest]
    merged = sorted(itertools.chain(runs, summaries), reverse=True,
                    key=lambda item: item.last_at if isinstance(item, QuietSummary) else item.started_at)
    return merged
