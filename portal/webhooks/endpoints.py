"""Adding, changing and removing webhook endpoints (the admin pages use it; the API lists them).

The secret is made here, shown to the admin once, and stored encrypted (portal/crypto.py);
the environment's endpoint (EIS_WEBHOOK_URL) can be disabled here but its URL and secret
belong to the deployment.
"""
from __future__ import annotations

import secrets

from sqlalchemy import delete, exists, func, select

from portal import crypto
from portal.extensions import db
from portal.models.audit import record as audit
from portal.models.webhooks import (
    ENVIRONMENT,
    EVENT_TYPES,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from portal.webhooks.http import UrlRefused, check


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def checked_url(url: str) -> str:
    """The URL, stripped, if the product may call it; UrlRefused with the reason otherwise."""
    url = (url or "").strip()
    check(url)
    return url


def checked_types(types) -> list[str]:
    chosen = [t for t in EVENT_TYPES if t in set(types or ())]
    unknown = sorted(set(types or ()) - set(EVENT_TYPES))
    if unknown:
        raise ValueError(f"Unknown event types: {', '.join(unknown)}.")
    if not chosen:
        raise ValueError("Choose at least one event type.")
    return chosen


def add(url: str, event_types, description: str, actor) -> tuple[WebhookEndpoint, str]:
    """A new enabled endpoint and its secret (the only time it is given out)."""
    secret = new_secret()
    endpoint = WebhookEndpoint(source="admin", url=checked_url(url), event_types=checked_types(event_types),
                               description=(description or "").strip()[:200], enabled=True,
                               secret_encrypted=crypto.encrypt(secret), created_by_id=getattr(actor, "id", None))
    db.session.add(endpoint)
    db.session.flush()
    audit("webhook_endpoint_added", actor, endpoint, url=endpoint.url, event_types=endpoint.event_types)
    return endpoint, secret


def change(endpoint: WebhookEndpoint, *, url: str, event_types, description: str, enabled: bool, actor) -> None:
    before = {"url": endpoint.url, "event_types": endpoint.event_types, "enabled": endpoint.enabled}
    if endpoint.source != ENVIRONMENT:
        endpoint.url = checked_url(url)
        endpoint.event_types = checked_types(event_types)
        endpoint.description = (description or "").strip()[:200]
    endpoint.enabled = bool(enabled)
    audit("webhook_endpoint_changed", actor, endpoint, before=before,
          after={"url": endpoint.url, "event_types": endpoint.event_types, "enabled": endpoint.enabled})


def set_enabled(endpoint: WebhookEndpoint, enabled: bool, actor) -> None:
    endpoint.enabled = enabled
    audit("webhook_endpoint_enabled" if enabled else "webhook_endpoint_disabled", actor, endpoint)


def new_secret_for(endpoint: WebhookEndpoint, actor) -> str:
    secret = new_secret()
    endpoint.secret_encrypted = crypto.encrypt(secret)
    audit("webhook_secret_changed", actor, endpoint)
    return secret


def remove(endpoint: WebhookEndpoint, actor) -> None:
    """The endpoint, its deliveries and their attempts; events no endpoint still has go too."""
    deliveries = select(WebhookDelivery.id).where(WebhookDelivery.endpoint_id == endpoint.id)
    db.session.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(deliveries)))
    db.session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id))
    db.session.execute(delete(WebhookEvent).where(~exists().where(WebhookDelivery.event_seq == WebhookEvent.seq)))
    audit("webhook_endpoint_removed", actor, endpoint, url=endpoint.url)
    db.session.delete(endpoint)


def delivery_counts(endpoint_ids: list[int]) -> dict[int, dict[str, int]]:
    counts: dict[int, dict[str, int]] = {i: {} for i in endpoint_ids}
    if endpoint_ids:
        for endpoint_id, state, n in db.session.execute(
                select(WebhookDelivery.endpoint_id, WebhookDelivery.state, func.count(WebhookDelivery.id))
                .where(WebhookDelivery.endpoint_id.in_(endpoint_ids))
                .group_by(WebhookDelivery.endpoint_id, WebhookDelivery.state)).all():
            counts[endpoint_id][state] = n
    return counts


__all__ = ["UrlRefused", "add", "change", "checked_types", "checked_url", "delivery_counts", "new_secret_for",
           "remove", "set_enabled"]
