"""Webhook endpoints and their recent deliveries, for admins' tokens (the portal manages them).
Secrets are never part of an answer."""
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from portal.extensions import db
from portal.models.webhooks import WebhookDelivery, WebhookEndpoint
from portal.timeutil import isoformat
from portal.web.api.blueprint import bp
from portal.web.api.crm import require_role
from portal.web.api.validation import number_arg
from portal.webhooks.endpoints import delivery_counts


def attempt_json(attempt) -> dict:
    return {"at": isoformat(attempt.at), "status_code": attempt.status_code, "error": attempt.error,
            "response_excerpt": attempt.response_excerpt, "duration_ms": attempt.duration_ms,
            "outcome": attempt.outcome, "redelivery": attempt.redelivery}


def delivery_json(delivery: WebhookDelivery) -> dict:
    event = delivery.event
    return {"id": delivery.id, "event_id": event.id, "event_type": event.type,
            "event_created_at": isoformat(event.created_at), "mailbox_id": event.mailbox_id,
            "state": delivery.state, "attempts": [attempt_json(a) for a in delivery.attempt_log],
            "next_attempt_at": isoformat(delivery.next_attempt_at), "finished_at": isoformat(delivery.finished_at)}


def endpoint_json(endpoint: WebhookEndpoint, counts: dict, deliveries: list) -> dict:
    return {"id": endpoint.id, "url": endpoint.url, "source": endpoint.source, "description": endpoint.description,
            "event_types": list(endpoint.event_types or []), "enabled": endpoint.enabled,
            "created_at": isoformat(endpoint.created_at),
            "counts": {state: counts.get(state, 0) for state in ("pending", "delivered", "failed")},
            "recent_deliveries": [delivery_json(d) for d in deliveries]}


@bp.get("/webhooks/endpoints")
def webhook_endpoints():
    require_role("admin")
    recent = number_arg("deliveries", 10, 0, 100)
    endpoints = db.session.scalars(select(WebhookEndpoint).order_by(WebhookEndpoint.id)).all()
    counts = delivery_counts([e.id for e in endpoints])
    answer = []
    for endpoint in endpoints:
        deliveries = db.session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
            .options(selectinload(WebhookDelivery.event), selectinload(WebhookDelivery.attempt_log))
            .order_by(WebhookDelivery.event_seq.desc()).limit(recent)).all() if recent else []
        answer.append(endpoint_json(endpoint, counts[endpoint.id], deliveries))
    return {"endpoints": answer}
