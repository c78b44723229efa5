"""The scheduler: enqueues due syncs and recovers stuck runs.

Safe to run in every worker process: each tick first takes (or keeps) a leader lease in
Redis, so one process schedules at a time and another takes over if it dies.
"""
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
import uuid
from datetime import timedelta

from flask import Flask, current_app
from rq.exceptions import NoSuchJobError
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from sqlalchemy import or_, select, update

from portal import run_history, runtime_settings
from portal.accounts import state
from portal.extensions import db
from portal.jobs.webhooks import sweep_due_webhooks
from portal.models import Mailbox, SyncRun
from portal.notify.sweep import sweep as sweep_notifications
from portal.queue import enqueue_sync, enqueue_sync_batch, get_redis
from portal.scheduling import queued_lease
from portal.sync import lock_key, release_lock_of_run
from portal.timeutil import utcnow
from portal.webhooks import outbox

log = logging.getLogger(__name__)
LEADER_KEY = "eis:scheduler:leader"
LEASE_SECONDS = 60
TICK_SECONDS = 15
BATCH = 500

_DELETE_IF = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
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
            recovered += fail_orphaned_jobs()
            enqueued = enqueue_due()
            sweep_notifications()  # emails owed for Problematic mailboxes (portal/notify), from the data
            sweep_due_webhooks()  # webhook deliveries whose job was lost (a killed worker, Redis)
            # Small batches, one a tick: a backlog of old runs drains over minutes, never
            # locking the table for long.
            pruned = run_history.prune(self.app.config["EIS_RUN_RETENTION_DAYS"])
            pruned += outbox.prune(self.app.config["EIS_RUN_RETENTION_DAYS"])  # delivered webhook events
            return {"leader": True, "enqueued": enqueued, "recovered": recovered, "pruned": pruned}

    def run_forever(self, stop: threading.Event) -> None:
        """Tick until stopped. A tick that fails (Redis or the database away, a bug) is
        logged and the next one comes on time: the first failure with its traceback, then
        one line a minute while it lasts, and a line when ticks work again."""
        failing_since = last_said = None
        failures = 0
        while not stop.is_set():
            try:
                self.tick()
                if failing_since is not None:
                    log.warning("scheduler ticks work again after %d failed ticks in %.0f s",
                                failures, time.monotonic() - failing_since)
                failing_since, failures = None, 0
            except Exception as exc:  # a bad tick must not kill the loop; it is logged and retried
                failures += 1
                if failing_since is None:
                    failing_since = last_said = time.monotonic()
                    log.exception("scheduler tick failed; retrying every tick until it works")
                elif time.monotonic() - last_said >= 60:
                    last_said = time.monotonic()
                    log.error("scheduler ticks still failing (%d in %.0f s): %s: %s", failures,
                              last_said - failing_since, type(exc).__name__, str(exc)[:300])
            stop.wait(self.app.config.get("EIS_SCHEDULER_TICK_SECONDS", TICK_SECONDS))


def enqueue_due(now=None) -> int:
    """Queue the due mailboxes; returns how many were queued. A first sync (pending: the
    back-fill, long) gets a job of its own; the others go EIS_SYNC_BATCH to a job, so that a
    worker forks and sets up once for fifty quiet polls instead of once for each."""
    now = now or utcnow()
    is_due = or_(Mailbox.next_sync_at.is_(None), Mailbox.next_sync_at <= now)
    due = db.session.execute(
        select(Mailbox.id, Mailbox.state).where(Mailbox.state.in_(state.SYNCABLE), is_due)
        .order_by(Mailbox.next_sync_at.asc().nulls_first()).limit(BATCH)
    ).all()
    if not due:
        db.session.commit()
        return 0
    # Provisional, and committed before any job is queued: each sync sets the real next
    # time when it ends, and a lease written after the jobs were queued would overwrite the
    # time a fast one had just set (seen in bench/fleet.py: polled twice a round). It keeps a
    # queued mailbox from being picked again every tick; never longer than the longest
    # interval, so a Redis that lost its queue delays nothing long.
    lease = queued_lease(runtime_settings.longest_interval())
    db.session.execute(update(Mailbox).where(Mailbox.id.in_([i for i, _ in due]), is_due)
                       .values(next_sync_at=now + lease))
    db.session.commit()
    queued: list[int] = []
    scheduled: list[int] = []
    for mailbox_id, mailbox_state in due:
        if mailbox_state == state.PENDING:
            _job, created = enqueue_sync(mailbox_id, "backfill")
            if created:
                queued.append(mailbox_id)
        else:
            scheduled.append(mailbox_id)
    size = max(int(current_app.config.get("EIS_SYNC_BATCH") or 1), 1)
    for start in range(0, len(scheduled), size):
        enqueue_sync_batch(scheduled[start:start + size])
    return len(queued) + len(scheduled)


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


def fail_orphaned_jobs(queue_name: str = "sync") -> int:
    """Sync jobs RQ still counts as started although the worker that took them is dead (a
    worker killed before its job recorded a run, which recover_stale_runs cannot see).
    Until RQ's own clean-up (up to ten minutes later) their mailboxes could not be queued
    again. A worker on this machine is dead when its process is; one elsewhere is left to
    RQ's clean-up (run here every tick: it fails executions that stopped heart-beating)."""
    redis = get_redis()
    registry = StartedJobRegistry(queue_name, connection=redis)
    here = socket.gethostname()
    failed = 0
    for job_id, execution_id in registry.get_job_and_execution_ids():  # after RQ's clean-up
        try:
            worker = Execution.fetch(execution_id, job_id, redis).worker_name
        except ValueError:
            continue  # the execution ended meanwhile
        if _worker_alive(redis, worker, here):
            continue
        log.warning("job %s: its worker %s is gone; failing it so that its mailbox can be queued again",
                    job_id, worker)
        _release_claims_of(job_id)
        _fail_dead_job(job_id)
        failed += 1
    return failed


def _release_claims_of(job_id: str) -> None:
    """A job killed between claiming its mailbox's lock and recording its run leaves a
    "claim-..." lock (no run to recover it by) for the lock's whole TTL: let go of it."""
    redis = get_redis()
    try:
        kwargs = Job.fetch(job_id, connection=redis).kwargs or {}
    except Exception:  # gone, or a payload this version cannot read: RQ's clean-up has it
        return
    ids = kwargs.get("mailbox_ids") or [kwargs.get("mailbox_id")]
    for mailbox_id in ids:
        if mailbox_id is None:
            continue
        key = lock_key(mailbox_id)
        held = redis.get(key)
        if held is not None and held.startswith(b"claim-"):
            redis.eval(_DELETE_IF, 1, key, held)


def _worker_alive(redis, name: str, here: str) -> bool:
    if not name:
        return True  # not known: leave it to RQ
    fields = {k.decode(): v.decode() for k, v in redis.hgetall(f"rq:worker:{name}").items()}
    if "death" in fields:
        return False
    if fields.get("hostname") != here or not fields.get("pid", "").isdigit():
        return True
    try:
        os.kill(int(fields["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    while not stop.is_set():
        try:
            Scheduler(create_app()).run_forever(stop)
        except Exception:  # run_forever catches its ticks' faults; this is the last line of defence
            log.exception("the scheduler loop stopped; starting it again in 5 s")
            stop.wait(5)


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
