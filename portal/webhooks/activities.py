"""activity.logged, and the activity's JSON: the same shape GET /customers/{id}/activities
returns (the API's serializer imports it from here, so the two cannot drift apart).

The webhook carries no text_body: the API gives it only to users allowed to see Emails and a
webhook has no reader to ask; a receiver fetches it through the API with such a user's token.
"""
from __future__ import annotations

from functools import partial

from sqlalchemy import select

from portal.extensions import db
from portal.models import Activity, OutgoingEmail
from portal.sending.deliver import reason_words
from portal.timeutil import isoformat
from portal.webhooks import outbox


def _address(entry: dict) -> str:
    return entry.get("address", "")


def activity_json(activity: Activity, *, with_body: bool) -> dict:
    email = activity.email
    data = {
        "id": activity.id,
        "email_id": email.id,
        "message_id": email.message_id,
        "subject": email.subject,
        "from": email.from_addr,
        "from_name": email.from_name,
        "to": [_address(a) for a in email.to_addrs or []],
        "cc": [_address(a) for a in email.cc_addrs or []],
        "date": isoformat(activity.email_date),
        "direction": activity.direction,
        "mailbox_id": activity.mailbox_id,
        "matched_field": activity.matched_field,
        "deal_external_id": activity.deal.external_id if activity.deal else None,
        "attachments": email.attachments or [],
        "outgoing": outgoing_state_json(activity),
    }
    if with_body:
        data["text_body"] = email.text_body
    return data


def outgoing_state_json(activity: Activity) -> dict | None:
    """For an email sent from the CRM: its state through the send queue (queued, sent,
    failed with a reason); None for email that was only synced."""
    if activity.direction != "out":
        return None
    outgoing = db.session.scalar(select(OutgoingEmail).where(OutgoingEmail.email_id == activity.email_id)
                                 .order_by(OutgoingEmail.id).limit(1))
    if outgoing is None:
        return None
    return {"id": outgoing.id, "state": outgoing.state, "reason": outgoing.reason,
            "reason_text": reason_words(outgoing.reason) or None, "detail": outgoing.detail}


def _logged_data(activity: Activity) -> dict:
    return {"customer_external_id": activity.customer.external_id,
            "activity": activity_json(activity, with_body=False)}


def activities_logged(activities: list[Activity], mailbox_id: int | None) -> None:
    """One activity.logged per customer the email was logged on, recorded at the commit of the
    transaction that adds the activities (their ids are known then)."""
    for activity in activities:
        outbox.record_at_commit("activity.logged", partial(_logged_data, activity), mailbox_id=mailbox_id)
