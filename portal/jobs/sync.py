"""Sync jobs (queue `sync`)."""
import logging

from rq import get_current_job

from portal import metrics
from portal.jobs.context import app_context
from portal.sync import AlreadyRunning, run_sync

log = logging.getLogger(__name__)


def sync_mailbox(mailbox_id: int, trigger: str = "scheduled", requested_by_id: int | None = None) -> dict:
    """Sync one mailbox. Mail-server faults are recorded on the run and the mailbox and the
    job ends; anything else (a bug, the database down) raises so RQ marks the job failed."""
    job = get_current_job()
    with app_context(), metrics.observe_job("sync"):
        try:
            run = run_sync(mailbox_id, trigger=trigger, requested_by_id=requested_by_id,
                           job_id=job.id if job else None)
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
