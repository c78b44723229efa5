"""The payloads of mailbox.state_changed and outgoing.sent / outgoing.failed, recorded in the
outbox by the code that makes the change (accounts/state.py, sending/deliver.py), one call each."""
from __future__ import annotations

from portal.extensions import db
from portal.models import Customer, Mailbox, OutgoingEmail
from portal.timeutil import isoformat, utcnow
from portal.webhooks import outbox


def mailbox_state_changed(mailbox: Mailbox, new_state: str, reason: str | None, detail: str | None, *,
                          first: bool = False) -> None:
    """Called before the change is applied: the mailbox still holds the old state and reason."""
    owner = mailbox.owner
    outbox.record("mailbox.state_changed", {
        "mailbox_id": mailbox.id,
        "address": mailbox.address,
        "owner_email": owner.email if owner is not None else None,
        "provider": mailbox.provider,
        "old_state": None if first else mailbox.state,
        "old_reason": None if first else mailbox.reason,
        "new_state": new_state,
        "reason": reason,
        "detail": detail,  # the provider's own words
        "at": isoformat(utcnow()),
    }, mailbox_id=mailbox.id)


def outgoing_finished(outgoing: OutgoingEmail, reason_text: str | None) -> None:
    """An email sent from the CRM was sent, or failed for good (with the reason)."""
    customer = db.session.get(Customer, outgoing.customer_id)
    outbox.record(f"outgoing.{outgoing.state}", {
        "outgoing_id": outgoing.id,
        "state": outgoing.state,
        "reason": outgoing.reason,
        "reason_text": reason_text or None,
        "detail": outgoing.detail,
        "customer_external_id": customer.external_id if customer is not None else None,
        "mailbox_id": outgoing.mailbox_id,
        "email_id": outgoing.email_id,
        "message_id": outgoing.message_id,
        "subject": outgoing.subject,
        "attempts": outgoing.attempts,
        "sent_at": isoformat(outgoing.sent_at),
    }, mailbox_id=outgoing.mailbox_id)
