"""Sync jobs (queue `sync`): one mailbox (a person asked, a first back-fill), or a batch of
due mailboxes the scheduler handed over together."""
import logging

from flask import has_app_context
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
    """The scheduler's polls of several due mailboxes, one after another in one work horse:
    one fork, one app set-up, one read of the interval settings for all of them. Each is
    synced as `sync_mailbox` would, under its own lock; a mailbox that fails does not stop
    the others. A fault outside the mail server (the database down) is raised at the end,
    so RQ records the job as failed; the mailboxes it left are due again when their lease
    ends (portal/jobs/schedule.py)."""
    job = get_current_job()
    results, first_error = [], None
    own_context = not has_app_context()  # in a worker; a test's in-process call keeps its session
    with app_context(), metrics.observe_job("sync_batch"):  # the counts of all, in one pipeline
        intervals = run_history.Intervals.current()
        for mailbox_id in mailbox_ids:
            try:
                results.append(_one(mailbox_id, "scheduled", None, job.id if job else None, intervals))
            except Exception as exc:  # recorded on the run where it could be; raised at the end
                log.exception("sync of mailbox %s failed", mailbox_id)
                db.session.rollback()
                results.append({"mailbox_id": mailbox_id, "error": type(exc).__name__})
                first_error = first_error or exc
            finally:
                if own_context:
                    db.session.remove()  # each mailbox starts with an empty identity map
    if first_error is not None:
        raise first_error
    return {"mailboxes": results}


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
