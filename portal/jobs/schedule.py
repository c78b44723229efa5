"""The scheduler: enqueues due syncs and recovers stuck runs.

Safe to run in every worker process: each tick first takes (or keeps) a leader lease in
Redis, so one process schedules at a time and another takes over if it dies.
"""
import logging
import multiprocessing
import signal
import threading
import uuid
from datetime import timedelta

from flask import Flask
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from sqlalchemy import or_, select

from portal.accounts import state
from portal.extensions import db
from portal.jobs.webhooks import sweep_due_webhooks
from portal.models import Mailbox, SyncRun
from portal.queue import enqueue_sync, get_redis
from portal.sync import release_lock_of_run
from portal.timeutil import utcnow

log = logging.getLogger(__name__)
LEADER_KEY = "eis:scheduler:leader"
LEASE_SECONDS = 60
TICK_SECONDS = 15
BATCH = 500
QUEUED_LEASE = timedelta(minutes=5)

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('expire', KEYS[1], ARGV[2])
end
return 0
"""


class Scheduler:
    def __init__(self, app: Flask, identity: str | None = None):
        self.app = app
        self.identity = identity or uuid.uuid4().hex

    def is_leader(self) -> bool:
        redis = get_redis(self.app)
        if redis.set(LEADER_KEY, self.identity, nx=True, ex=LEASE_SECONDS):
            return True
        return bool(redis.eval(_RENEW, 1, LEADER_KEY, self.identity, LEASE_SECONDS))

    def tick(self) -> dict:
        """One pass; returns what it did (for logs and tests)."""
        with self.app.app_context():
            if not self.is_leader():
                return {"leader": False, "enqueued": 0, "recovered": 0}
            recovered = recover_stale_runs(self.app.config["EIS_RUN_STALE_SECONDS"])
            enqueued = enqueue_due()
            sweep_due_webhooks()  # webhook deliveries whose job was lost (a killed worker, Redis)
            return {"leader": True, "enqueued": enqueued, "recovered": recovered}

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # a bad tick must not kill the loop; it is logged and retried
                log.exception("scheduler tick failed")
            stop.wait(self.app.config.get("EIS_SCHEDULER_TICK_SECONDS", TICK_SECONDS))


def enqueue_due(now=None) -> int:
    now = now or utcnow()
    due = db.session.scalars(
        select(Mailbox).where(
            Mailbox.state.in_(state.SYNCABLE),
            or_(Mailbox.next_sync_at.is_(None), Mailbox.next_sync_at <= now),
        ).order_by(Mailbox.next_sync_at.asc().nulls_first()).limit(BATCH)
    ).all()
    count = 0
    for mailbox in due:
        trigger = "backfill" if mailbox.state == state.PENDING else "scheduled"
        _job, created = enqueue_sync(mailbox.id, trigger)
        count += int(created)
        # Provisional: the run sets the real next time when it ends. This keeps a mailbox
        # whose job is waiting in the queue from being picked again every tick.
        mailbox.next_sync_at = now + QUEUED_LEASE
    db.session.commit()
    return count


def recover_stale_runs(stale_seconds: int, now=None) -> int:
    """Runs whose worker stopped heart-beating are marked failed and their lock released."""
    now = now or utcnow()
    stale = db.session.scalars(
        select(SyncRun).where(SyncRun.status == "running",
                              SyncRun.heartbeat_at < now - timedelta(seconds=stale_seconds))
    ).all()
    for run in stale:
        run.status = "failed"
        run.finished_at = now
        run.error_class = "worker_lost"
        run.error_detail = (f"The worker stopped heart-beating at {run.heartbeat_at.isoformat()}Z "
                            "(killed or lost); the next run continues from the last checkpoint.")
        release_lock_of_run(run)
        _fail_dead_job(run.job_id)
    db.session.commit()
    return len(stale)


def _fail_dead_job(job_id: str | None) -> None:
    """The killed worker's RQ job still reads "started" until RQ's own clean-up (minutes
    later); until then the mailbox could not be queued again. Take it out now."""
    if not job_id:
        return
    redis = get_redis()
    try:
        job = Job.fetch(job_id, connection=redis)
    except NoSuchJobError:
        return
    if job.get_status(refresh=True) == JobStatus.STARTED:
        StartedJobRegistry(job.origin, connection=redis).remove_executions(job)
        job.delete()


def _scheduler_process_main() -> None:
    from portal import create_app  # in the spawned process only: the package imports this module

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    Scheduler(create_app()).run_forever(stop)


def start_scheduler_process() -> multiprocessing.Process:
    """The scheduler in a process of its own, started with 'spawn'.

    Not a thread of the worker: RQ forks a child for every job, and a fork taken while
    another thread holds a lock (the import lock, a connection pool's mutex) leaves the
    child waiting for it forever. That was seen here: a job stuck in an import.
    """
    process = multiprocessing.get_context("spawn").Process(
        target=_scheduler_process_main, name="eis-scheduler", daemon=True)
    process.start()
    return process
