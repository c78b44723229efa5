"""Webhook delivery jobs (queue `default`) and the tick's sweep for due deliveries."""
import logging
from datetime import timedelta, timezone

from flask import current_app
from rq import get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from portal.extensions import db
from portal.jobs.context import app_context
from portal.queue import enqueue_webhook_delivery, get_redis, webhook_job_id
from portal.webhooks import outbox
from portal.timeutil import utcnow
from portal.webhooks.delivery import deliver_due, due_endpoint_ids, is_locked, lock_ttl

log = logging.getLogger(__name__)


def deliver_webhooks(endpoint_id: int) -> dict:
    """Send one endpoint's due events for one turn (EIS_WEBHOOK_JOB_SECONDS), then leave the
    worker to syncs and sends; events left over get a continuation job at once."""
    job = get_current_job()
    with app_context():
        result = deliver_due(endpoint_id)
        if result.get("more"):
            continuation = job is None or job.id == webhook_job_id(endpoint_id)
            enqueue_webhook_delivery(endpoint_id, continuation=continuation)
        return result


def sweep_due_webhooks() -> int:
    """The scheduler's tick: queue the delivery job of every endpoint with a due delivery (so an
    event whose job was lost, with a killed worker or Redis, is still delivered). A job that
    reads "started" while nobody holds the endpoint's lock belongs to a killed worker: it is
    taken out and queued again. Returns the number of jobs queued."""
    if current_app.config.get("EIS_WEBHOOK_URL"):
        outbox.environment_endpoint()
        db.session.commit()
    queued = 0
    for endpoint_id in due_endpoint_ids():
        _job, created = enqueue_webhook_delivery(endpoint_id)
        if not created and not is_locked(endpoint_id) and _drop_dead_job(webhook_job_id(endpoint_id)):
            _job, created = enqueue_webhook_delivery(endpoint_id)
        queued += int(created)
    return queued


def _drop_dead_job(job_id: str) -> bool:
    redis = get_redis()
    try:
        job = Job.fetch(job_id, connection=redis)
    except NoSuchJobError:
        return True
    if job.get_status(refresh=True) != JobStatus.STARTED:
        return False  # queued: it will run
    started = job.started_at
    if started is not None and started.tzinfo is not None:
        started = started.astimezone(timezone.utc).replace(tzinfo=None)
    if started is None or utcnow() - started < timedelta(seconds=lock_ttl()):
        return False  # just started, and about to take the lock
    log.warning("webhook job %s was started by a worker that is gone: queued again", job_id)
    StartedJobRegistry(job.origin, connection=redis).remove_executions(job)
    job.delete()
    return True
