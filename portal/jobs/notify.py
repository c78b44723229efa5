"""Notification jobs (queue `default`): one email of portal/notify, retried by RQ on
transient faults of the system SMTP account."""
from rq import get_current_job

from portal.jobs.context import app_context
from portal.notify.deliver import deliver


def send_notification(notification_id: int) -> dict:
    """Send one Notification (queued by the sweep through portal.queue.enqueue_notification).
    A transient fault raises so that RQ retries; at the last attempt it is marked failed."""
    job = get_current_job()
    last_attempt = job is None or not job.retries_left
    with app_context():
        return deliver(notification_id, last_attempt=last_attempt)
