"""JSON shapes of the API; the OpenAPI document describes exactly these."""
from portal.timeutil import isoformat
from portal.webhooks.activities import activity_json as activity_json  # one shape: the API's and the webhook's
from portal.webhooks.activities import outgoing_state_json as outgoing_state_json


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


