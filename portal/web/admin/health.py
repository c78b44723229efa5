"""The numbers that tell whether syncing keeps up: queues, workers, failed jobs, stuck runs,
how late the oldest due sync is, mailboxes by state, and the last hour's runs."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flask import current_app
from redis.exceptions import RedisError
from rq import Worker
from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.results import Result
from sqlalchemy import func, select

from portal.accounts.oauth.providers import all_providers
from portal.accounts.policy import allowed_domains
from portal.extensions import db
from portal.models import Mailbox, SyncRun
from portal.models.mailboxes import SYNCABLE
from portal.notify import status as notify_status
from portal.queue import QUEUES, get_queue, get_redis
from portal.timeutil import to_utc_naive, utcnow
from portal.web.mailbox_listing import state_counts

FAILED_SHOWN = 10  # per queue


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
class FailedJob:
    queue: str
    id: str
    func: str
    error: str  # the last line of the traceback
    when: datetime | None


@dataclass
class Health:
    now: datetime
    queues: list[QueueNumbers] = field(default_factory=list)
    workers: list[WorkerInfo] = field(default_factory=list)
    failed: list[FailedJob] = field(default_factory=list)
    redis_error: str | None = None
    stuck: list = field(default_factory=list)  # (SyncRun, address)
    running: int = 0
    stale_seconds: int = 300
    due: int = 0  # syncable mailboxes whose next sync time has passed
    oldest_due: datetime | None = None
    states: dict = field(default_factory=dict)
    last_hour: dict = field(default_factory=dict)  # status -> runs started in the last hour

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
    def keeping_up(self) -> bool | None:
        """A short answer: nothing stuck, workers present if there is work, due syncs not long late."""
        if self.redis_error:
            return None
        late = self.late_seconds or 0
        return not self.stuck and (self.workers or not self.queued_total) and late < 15 * 60


@dataclass(frozen=True)
class ConfigNote:
    setting: str
    words: str
    warn: bool = True


def configuration_notes() -> list[ConfigNote]:
    """What the server's settings allow that an admin should know about (they change only
    with a restart, so the page shows them once, outside the refreshing numbers)."""
    config, notes = current_app.config, []
    domains = allowed_domains()
    if domains is None:
        notes.append(ConfigNote("EIS_MAILBOX_DOMAINS", "is not set, so any address at any domain may be connected "
                                "as a mailbox. A rep could connect a customer's address through a mail server "
                                "of their own; email involving it would then count as internal and stop being "
                                "logged for everybody. Set it to your organisation's domains."))
    else:
        notes.append(ConfigNote("EIS_MAILBOX_DOMAINS", "allows only addresses at " + ", ".join(domains)
                                + " to be connected.", warn=False))
    if not config.get("EIS_HTTPS"):
        notes.append(ConfigNote("EIS_HTTPS", "is off: cookies are not marked Secure and no HSTS is sent. Turn it "
                                "on when the portal is served over HTTPS (as it must be for real use)."))
    for provider in all_providers():
        if not provider.configured:
            notes.append(ConfigNote(provider.env_prefix + "CLIENT_ID", f"is not set: reps cannot connect "
                                    f"{provider.title} mailboxes (set it and {provider.env_prefix}CLIENT_SECRET).",
                                    warn=False))
    notes.append(ConfigNote("EIS_NOTIFY_SMTP_URL", *notify_status.health_words()))
    return notes


def gather() -> Health:
    now = utcnow()
    stale = int(current_app.config["EIS_RUN_STALE_SECONDS"])
    health = Health(now=now, stale_seconds=stale)
    _redis_numbers(health)
    rows = db.session.execute(
        select(SyncRun, Mailbox.address).join(Mailbox, Mailbox.id == SyncRun.mailbox_id)
        .where(SyncRun.status == "running").order_by(SyncRun.heartbeat_at).limit(200)
    ).all()
    health.running = db.session.scalar(select(func.count(SyncRun.id)).where(SyncRun.status == "running")) or 0
    health.stuck = [(run, address) for run, address in rows if run.heartbeat_at < now - timedelta(seconds=stale)]
    health.due, health.oldest_due = db.session.execute(
        select(func.count(Mailbox.id), func.min(Mailbox.next_sync_at))
        .where(Mailbox.state.in_(SYNCABLE), Mailbox.next_sync_at <= now)
    ).one()
    health.states = state_counts()
    health.last_hour = dict(db.session.execute(
        select(SyncRun.status, func.count(SyncRun.id)).where(SyncRun.started_at >= now - timedelta(hours=1))
        .group_by(SyncRun.status)
    ).all())
    return health


def _redis_numbers(health: Health) -> None:
    try:
        redis = get_redis()
        for name in QUEUES:
            queue = get_queue(name)
            failed = FailedJobRegistry(queue=queue)
            health.queues.append(QueueNumbers(name=name, queued=queue.count,
                                              started=StartedJobRegistry(queue=queue).count, failed=failed.count))
            ids = failed.get_job_ids(0, FAILED_SHOWN - 1, desc=True)
            for job in Job.fetch_many(ids, connection=redis):
                if job is not None:
                    health.failed.append(_failed_job(name, job))
        for worker in Worker.all(connection=redis):
            health.workers.append(WorkerInfo(
                name=worker.name, state=_state_name(worker.get_state()), queues=worker.queue_names(),
                last_heartbeat=_naive(worker.last_heartbeat), current_job=worker.get_current_job_id(),
                done=worker.successful_job_count, failed=worker.failed_job_count,
            ))
    except (RedisError, OSError) as exc:
        health.redis_error = f"Redis could not be reached: {type(exc).__name__}: {exc}"


def _failed_job(queue: str, job: Job) -> FailedJob:
    error, when = "", _naive(job.ended_at)
    result = job.latest_result()
    if result is not None and result.type == Result.Type.FAILED:
        error = result.exc_string or ""
        when = when or _naive(result.created_at)
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return FailedJob(queue=queue, id=job.id, func=job.func_name or "?", error=(lines[-1] if lines else "")[:500],
                     when=when)


def _state_name(state) -> str:
    value = getattr(state, "value", state)  # rq gives a WorkerStatus (a str enum) or a plain string
    return "starting" if value in (None, "", "?") else str(value)


def _naive(moment: datetime | None) -> datetime | None:
    return to_utc_naive(moment) if moment is not None else None
