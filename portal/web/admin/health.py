"""The numbers that tell whether syncing keeps up, for people: the fleet's numbers from
portal/fleet_health.py (the ones /metrics exports too), and beside them the stuck runs, the
newest failed jobs and the last hour's runs."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flask import current_app
from redis.exceptions import RedisError
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.results import Result
from sqlalchemy import func, select

from portal.accounts.oauth.providers import all_providers
from portal.accounts.policy import allowed_domains
from portal.extensions import db
from portal.fleet_health import Fleet, gather_fleet
from portal.models import Mailbox, SyncQuietDay, SyncRun
from portal.notify import status as notify_status
from portal.queue import QUEUES, get_queue, get_redis
from portal.timeutil import to_utc_naive

FAILED_SHOWN = 10  # per queue


@dataclass
class FailedJob:
    queue: str
    id: str
    func: str
    error: str  # the last line of the traceback
    when: datetime | None


@dataclass
class Health:
    """The fleet's numbers (the same that /metrics exports) and what only people look at: the
    stuck runs themselves, the newest failed jobs, the last hour's runs."""
    fleet: Fleet
    failed: list[FailedJob] = field(default_factory=list)
    stuck: list = field(default_factory=list)  # (SyncRun, address), at most 200
    last_hour: dict = field(default_factory=dict)  # status -> runs started in the last hour
    quiet_last_hour: int = 0  # mailboxes polled quietly in the last hour

    @property
    def now(self) -> datetime:
        return self.fleet.now

    @property
    def keeping_up(self) -> bool | None:
        """A short answer: nothing stuck, workers present if there is work, due syncs not long late."""
        fleet = self.fleet
        if fleet.redis_error:
            return None
        late = fleet.late_seconds or 0
        return not fleet.stuck and (fleet.workers or not fleet.queued_total) and late < 15 * 60


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
    fleet = gather_fleet()
    health = Health(fleet=fleet)
    if not fleet.redis_error:
        _failed_jobs(health)
    rows = db.session.execute(
        select(SyncRun, Mailbox.address).join(Mailbox, Mailbox.id == SyncRun.mailbox_id)
        .where(SyncRun.status == "running",
               SyncRun.heartbeat_at < fleet.now - timedelta(seconds=fleet.stale_seconds))
        .order_by(SyncRun.heartbeat_at).limit(200)
    ).all()
    health.stuck = [(run, address) for run, address in rows]
    health.last_hour = dict(db.session.execute(
        select(SyncRun.status, func.count(SyncRun.id)).where(SyncRun.started_at >= fleet.now - timedelta(hours=1))
        .group_by(SyncRun.status)
    ).all())
    # Quiet polls are counted per mailbox per day, not kept as runs (portal/run_history.py):
    # the mailboxes whose last quiet poll was in the last hour.
    health.quiet_last_hour = db.session.scalar(select(func.count()).select_from(SyncQuietDay).where(
        SyncQuietDay.last_at >= fleet.now - timedelta(hours=1))) or 0
    return health


def _failed_jobs(health: Health) -> None:
    try:
        redis = get_redis()
        for name in QUEUES:
            ids = FailedJobRegistry(queue=get_queue(name)).get_job_ids(0, FAILED_SHOWN - 1, desc=True)
            for job in Job.fetch_many(ids, connection=redis):
                if job is not None:
                    health.failed.append(_failed_job(name, job))
    except (RedisError, OSError) as exc:
        health.fleet.redis_error = f"Redis could not be reached: {type(exc).__name__}: {exc}"


def _failed_job(queue: str, job: Job) -> FailedJob:
    error, when = "", _naive(job.ended_at)
    result = job.latest_result()
    if result is not None and result.type == Result.Type.FAILED:
        error = result.exc_string or ""
        when = when or _naive(result.created_at)
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return FailedJob(queue=queue, id=job.id, func=job.func_name or "?", error=(lines[-1] if lines else "")[:500],
                     when=when)


def _naive(moment: datetime | None) -> datetime | None:
    return to_utc_naive(moment) if moment is not None else None
