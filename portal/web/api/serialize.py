"""JSON shapes of the API; the OpenAPI document describes exactly these."""
from sqlalchemy import select

from portal.extensions import db
from portal.models import OutgoingEmail
from portal.sending.deliver import reason_words
from portal.timeutil import isoformat


def customer_json(customer) -> dict:
    return {
        "external_id": customer.external_id,
        "name": customer.name,
        "primary_email": customer.primary_email,
        "primary_email_history": [
            {"address": e.address, "since": isoformat(e.since), "until": isoformat(e.until)}
            for e in customer.primary_emails
        ],
        "additional_emails": [c.address for c in customer.contact_emails],
        "created_at": isoformat(customer.created_at),
        "updated_at": isoformat(customer.updated_at),
    }


def deal_json(deal) -> dict:
    return {
        "external_id": deal.external_id,
        "name": deal.name,
        "owner_email": deal.owner.email if deal.owner else None,
        "customers": [{"external_id": m.customer.external_id, "role": m.role} for m in deal.members],
    }


def _address(entry: dict) -> str:
    return entry.get("address", "")


def activity_json(activity, *, with_body: bool) -> dict:
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


def outgoing_state_json(activity) -> dict | None:
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
