"""The fleet's numbers, computed in one place for the admin health page and for /metrics, so
the people and the operators' monitoring read the same thing.

Read from the database and Redis at the moment they are asked for (a scrape, a page view):
mailboxes by state and reason, how long since each syncable mailbox last synced (per
provider), syncs that are due, runs in flight, sends by outcome, queue depths and the live
workers. The counters the jobs write as they run (durations, failures, emails logged) are
portal/metrics.py's.
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flask import current_app
from redis.exceptions import RedisError
from rq import Worker
from rq.registry import FailedJobRegistry, StartedJobRegistry
from sqlalchemy import func, select

from portal import runtime_settings
from portal.extensions import db
from portal.models import Mailbox, OutgoingEmail, SyncRun
from portal.models.mailboxes import PROVIDERS, STATES, SYNCABLE
from portal.queue import QUEUES, get_queue, get_redis
from portal.timeutil import to_utc_naive, utcnow

# Upper bounds (seconds) of the sync-lag histogram: a minute up to a day.
LAG_BUCKETS = (60, 300, 600, 1200, 1800, 3600, 7200, 21600, 86400)
# A due mailbox is "overdue" once its next sync time is this far behind: four scheduler
# ticks (15 s) plus the time a free worker needs to take a job, so a fleet that keeps up shows 0.
DUE_GRACE = timedelta(seconds=60)
SEND_STATES = ("queued", "sent", "failed")


@dataclass
class QueueNumbers:
    name: str
    queued: int
    started: int
    failed: int


@dataclass
class WorkerInfo:
    name: str
    state: str
    queues: list[str]
    last_heartbeat: datetime | None
    current_job: str | None
    done: int
    failed: int


@dataclass
class ProviderLag:
    """Syncable mailboxes of one provider by how long ago they last synced successfully (since
    linking, for one that never did). `buckets` holds (upper bound, mailboxes at or under it)."""
    provider: str
    buckets: list[tuple[float, int]]
    count: int = 0
    total_seconds: float = 0.0
    max_seconds: float = 0.0
    lagging: int = 0  # mailboxes whose last sync is over twice the longest interval ago


@dataclass
class Fleet:
    now: datetime
    mailboxes: dict[tuple[str, str], int] = field(default_factory=dict)  # (state, reason or "") -> n
    lag: dict[str, ProviderLag] = field(default_factory=dict)
    interval_max_seconds: int = 0
    due: int = 0  # syncable mailboxes whose next sync time has passed
    overdue: int = 0  # ... by more than DUE_GRACE: due but not yet synced
    oldest_due: datetime | None = None
    running: int = 0  # sync runs in flight
    stuck: int = 0  # ... with no heartbeat for EIS_RUN_STALE_SECONDS
    stale_seconds: int = 300
    sends: dict[tuple[str, str], int] = field(default_factory=dict)  # (state, reason or "") -> n
    queues: list[QueueNumbers] = field(default_factory=list)
    workers: list[WorkerInfo] = field(default_factory=list)
    redis_error: str | None = None

    @property
    def states(self) -> dict[str, int]:
        counts = {state: 0 for state in STATES}
        for (state, _reason), n in self.mailboxes.items():
            counts[state] = counts.get(state, 0) + n
        return counts

    @property
    def reasons(self) -> list[tuple[str, str, int]]:
        """(state, reason, n) for mailboxes that carry a reason, most first."""
        rows = [(state, reason, n) for (state, reason), n in self.mailboxes.items() if reason and n]
        return sorted(rows, key=lambda row: (-row[2], row[0], row[1]))

    @property
    def late_seconds(self) -> float | None:
        return (self.now - self.oldest_due).total_seconds() if self.oldest_due else None

    @property
    def queued_total(self) -> int:
        return sum(q.queued for q in self.queues)

    @property
    def failed_total(self) -> int:
        return sum(q.failed for q in self.queues)

    @property
    def workers_alive(self) -> int:
        return len(self.workers)

    @property
    def lag_max_seconds(self) -> float:
        return max((lag.max_seconds for lag in self.lag.values()), default=0.0)

    def sends_by_state(self) -> dict[str, int]:
        counts = {state: 0 for state in SEND_STATES}
        for (state, _reason), n in self.sends.items():
            counts[state] = counts.get(state, 0) + n
        return counts


def gather_fleet() -> Fleet:
    """Every number, now. The database must answer (its errors raise); Redis being away is
    kept in `redis_error` and its numbers are left empty."""
    now = utcnow()
    fleet = Fleet(now=now, stale_seconds=int(current_app.config["EIS_RUN_STALE_SECONDS"]))
    fleet.interval_max_seconds = runtime_settings.get("interval_max_minutes") * 60
    _mailbox_numbers(fleet)
    _lag(fleet)
    _run_numbers(fleet)
    fleet.sends = {(state, ""): 0 for state in SEND_STATES}
    for state, reason, n in db.session.execute(
            select(OutgoingEmail.state, OutgoingEmail.reason, func.count(OutgoingEmail.id))
            .group_by(OutgoingEmail.state, OutgoingEmail.reason)).all():
        fleet.sends[(state, reason or "")] = n
    _redis_numbers(fleet)
    return fleet


def _mailbox_numbers(fleet: Fleet) -> None:
    fleet.mailboxes = {(state, ""): 0 for state in STATES}  # every state present, even at 0
    for state, reason, n in db.session.execute(
            select(Mailbox.state, Mailbox.reason, func.count(Mailbox.id)).group_by(Mailbox.state, Mailbox.reason)):
        fleet.mailboxes[(state, reason or "")] = n
    # A NULL next_sync_at is due now for the scheduler; it counts from the linking here.
    due_at = func.coalesce(Mailbox.next_sync_at, Mailbox.connected_at)
    syncable = Mailbox.state.in_(SYNCABLE)
    fleet.due, fleet.oldest_due = db.session.execute(
        select(func.count(Mailbox.id), func.min(due_at)).where(syncable, due_at <= fleet.now)).one()
    fleet.overdue = db.session.scalar(
        select(func.count(Mailbox.id)).where(syncable, due_at <= fleet.now - DUE_GRACE)) or 0


def _lag(fleet: Fleet) -> None:
    """One row per syncable mailbox (provider and a time): cheap at ten thousand, and the
    sum the histogram needs is portable this way, where date arithmetic in SQL is not."""
    since = func.coalesce(Mailbox.last_success_at, Mailbox.connected_at)
    lags: dict[str, list[float]] = {provider: [] for provider in PROVIDERS}
    for provider, at in db.session.execute(
            select(Mailbox.provider, since).where(Mailbox.state.in_(SYNCABLE))):
        lags.setdefault(provider, []).append(max((fleet.now - at).total_seconds(), 0.0) if at else 0.0)
    for provider, values in lags.items():
        values.sort()
        buckets = [(float(bound), bisect_right(values, bound)) for bound in LAG_BUCKETS]
        buckets.append((float("inf"), len(values)))
        fleet.lag[provider] = ProviderLag(
            provider=provider, buckets=buckets, count=len(values), total_seconds=sum(values),
            max_seconds=values[-1] if values else 0.0,
            lagging=len(values) - bisect_right(values, 2 * fleet.interval_max_seconds))


def _run_numbers(fleet: Fleet) -> None:
    running = SyncRun.status == "running"
    fleet.running = db.session.scalar(select(func.count(SyncRun.id)).where(running)) or 0
    fleet.stuck = db.session.scalar(select(func.count(SyncRun.id)).where(
        running, SyncRun.heartbeat_at < fleet.now - timedelta(seconds=fleet.stale_seconds))) or 0


def _redis_numbers(fleet: Fleet) -> None:
    try:
        redis = get_redis()
        for name in QUEUES:
            queue = get_queue(name)
            fleet.queues.append(QueueNumbers(name=name, queued=queue.count,
                                             started=StartedJobRegistry(queue=queue).count,
                                             failed=FailedJobRegistry(queue=queue).count))
        for worker in Worker.all(connection=redis):
            fleet.workers.append(WorkerInfo(
                name=worker.name, state=_state_name(worker.get_state()), queues=worker.queue_names(),
                last_heartbeat=_naive(worker.last_heartbeat), current_job=worker.get_current_job_id(),
                done=worker.successful_job_count, failed=worker.failed_job_count,
            ))
    except (RedisError, OSError) as exc:
        fleet.queues, fleet.workers = [], []
        fleet.redis_error = f"Redis could not be reached: {type(exc).__name__}: {exc}"


def _state_name(state) -> str:
    value = getattr(state, "value", state)  # rq gives a WorkerStatus (a str enum) or a plain string
    return "starting" if value in (None, "", "?") else str(value)


def _naive(moment: datetime | None) -> datetime | None:
    return to_utc_naive(moment) if moment is not None else None
