"""Sync jobs (queue `sync`): one mailbox (a person asked, a first back-fill), or a batch of
due mailboxes the scheduler handed over together."""
import logging
from concurrent.futures import ThreadPoolExecutor

from flask import current_app, has_app_context
from rq import get_current_job

from portal import metrics, run_history
from portal.extensions import db
from portal.jobs.context import app_context
from portal.sync import AlreadyRunning, run_sync

log = logging.getLogger(__name__)


def sync_mailbox(mailbox_id: int, trigger: str = "scheduled", requested_by_id: int | None = None) -> dict:
    """Sync one mailbox. Mail-server faults are recorded on the run and the mailbox and the
    job ends; anything else (a bug, the database down) raises so RQ marks the job failed."""
    job = get_current_job()
    with app_context(), metrics.observe_job("sync"):
        return _one(mailbox_id, trigger, requested_by_id, job.id if job else None, None)


def sync_mailboxes(mailbox_ids: list[int]) -> dict:
    """The scheduler's polls of several due mailboxes in one work horse: one fork, one app
    set-up, one read of the interval settings for all of them. Each is synced as
    `sync_mailbox` would, under its own lock; a mailbox that fails does not stop the others.
    On PostgreSQL, EIS_SYNC_THREADS (4) of them at a time: a quiet poll spends most of its
    time waiting for the mail server, and a thread each overlaps those waits (SQLite allows
    one writer at a time, so there they go one after another). A fault outside the mail
    server (the database down) is raised at the end, so RQ records the job as failed; the
    mailboxes it left are due again when their lease ends (portal/jobs/schedule.py)."""
    job = get_current_job()
    job_id = job.id if job else None
    own_context = not has_app_context()  # in a worker; a test's in-process call keeps its session
    with app_context(), metrics.observe_job("sync_batch"):  # the counts of all, in one pipeline
        intervals = run_history.Intervals.current()
        threads = min(_threads(), len(mailbox_ids))
        if threads <= 1 or not own_context:
            outcomes = [_guarded(mailbox_id, job_id, intervals, own_context) for mailbox_id in mailbox_ids]
        else:
            app = current_app._get_current_object()

            def in_thread(mailbox_id: int):
                with app.app_context():  # a session of its own (Flask-SQLAlchemy scopes by context)
                    return _guarded(mailbox_id, job_id, intervals, True)

            with ThreadPoolExecutor(threads, thread_name_prefix="sync") as pool:
                outcomes = list(pool.map(in_thread, mailbox_ids))
    errors = [error for _, error in outcomes if error is not None]
    if errors:
        raise errors[0]
    return {"mailboxes": [result for result, _ in outcomes]}


def _threads() -> int:
    if db.engine.dialect.name == "sqlite":
        return 1
    return max(int(current_app.config.get("EIS_SYNC_THREADS") or 1), 1)


def _guarded(mailbox_id: int, job_id: str | None, intervals: run_history.Intervals,
             own_context: bool) -> tuple[dict, Exception | None]:
    try:
        return _one(mailbox_id, "scheduled", None, job_id, intervals), None
    except Exception as exc:  # recorded on the run where it could be; raised at the end
        log.exception("sync of mailbox %s failed", mailbox_id)
        db.session.rollback()
        return {"mailbox_id": mailbox_id, "error": type(exc).__name__}, exc
    finally:
        if own_context:
            db.session.remove()  # each mailbox starts with an empty identity map


def _one(mailbox_id: int, trigger: str, requested_by_id: int | None, job_id: str | None,
         intervals: run_history.Intervals | None) -> dict:
    try:
        run = run_sync(mailbox_id, trigger=trigger, requested_by_id=requested_by_id, job_id=job_id,
                       intervals=intervals)
    except AlreadyRunning as exc:
        log.info("%s", exc)
        return {"mailbox_id": mailbox_id, "skipped": "already running"}
    except Exception:
        metrics.count_sync_failure("internal_error")  # run_sync recorded it on the run, and raises
        raise
    if run is None:
        return {"mailbox_id": mailbox_id, "skipped": "not syncable"}
    metrics.count_sync_run(run)
    return {"mailbox_id": mailbox_id, "run_id": run.id, "status": run.status}
