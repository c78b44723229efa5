"""Send jobs (queue `send`): one email to a customer, retried by RQ on transient faults."""
from rq import get_current_job

from portal import metrics
from portal.jobs.context import app_context
from portal.sending.deliver import send_outgoing


def send_email(outgoing_id: int) -> dict:
    """Send one OutgoingEmail (enqueued by portal.queue.enqueue_send with its Retry).

    A transient fault raises so that RQ retries; at the last attempt the email is marked
    failed first. Refusals and rejections finish the job deliberately: retrying cannot help.
    """
    job = get_current_job()
    # retries_left counts down as RQ retries; none left (or no RQ at all) is the last chance.
    last_attempt = job is None or not job.retries_left
    with app_context(), metrics.observe_job("send"):
        return send_outgoing(outgoing_id, last_attempt=last_attempt)
