"""Webhooks to the CRM: the endpoints, the outbox of events, and each event's delivery to each
endpoint with its attempts (portal/webhooks/ writes them; the admin's delivery log reads them).

An event row is written in the same transaction as the change it describes (the outbox), with
one delivery row per endpoint that takes its type; the delivery job sends the due deliveries
of one endpoint in event order.
"""
from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.extensions import db
from portal.timeutil import utcnow

EVENT_TYPES = ("activity.logged", "outgoing.sent", "outgoing.failed", "mailbox.state_changed")
ENVIRONMENT = "environment"  # the endpoint of EIS_WEBHOOK_URL; the others are "admin"
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


class WebhookEndpoint(db.Model):
    __tablename__ = "webhook_endpoints"
    id: Mapped[int] = mapped_column(primary_key=True)
    # "admin" (made in the portal) or "environment" (EIS_WEBHOOK_URL, at most one row).
    source: Mapped[str] = mapped_column(String(16), default="admin")
    url: Mapped[str] = mapped_column(String(2000))
    # The signing secret, encrypted with EIS_ENCRYPTION_KEYS (portal/crypto.py); never shown again.
    secret_encrypted: Mapped[str | None] = mapped_column(Text)
    event_types: Mapped[list] = mapped_column(JSON, default=list)
    enabled: Mapped[bool] = mapped_column(default=True)
    description: Mapped[str] = mapped_column(String(200), default="")
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    created_by = relationship("User")

    def takes(self, event_type: str) -> bool:
        return event_type in (self.event_types or ())


class WebhookEvent(db.Model):
    """One event in the outbox. `seq` orders them (per mailbox: a state change after the
    activities it explains); `id` is the stable public id receivers de-duplicate on."""
    __tablename__ = "webhook_events"
    seq: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)  # evt_<32 hex>
    type: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    mailbox_id: Mapped[int | None] = mapped_column(ForeignKey("mailboxes.id"), index=True)
    data: Mapped[dict] = mapped_column(JSON)

    deliveries = relationship("WebhookDelivery", back_populates="event")


class WebhookDelivery(db.Model):
    """One event to one endpoint: pending (next_attempt_at), delivered, or failed for good."""
    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("event_seq", "endpoint_id"),
        Index("ix_webhook_deliveries_endpoint_state_due", "endpoint_id", "state", "next_attempt_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    event_seq: Mapped[int] = mapped_column(ForeignKey("webhook_events.seq", ondelete="CASCADE"))
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(10), default=PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    retry_until: Mapped[datetime | None]  # retried until then (24 hours from the event or a Redeliver)
    redelivery: Mapped[bool] = mapped_column(default=False)  # the next attempt was asked for by an admin
    last_status: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]

    event = relationship("WebhookEvent", back_populates="deliveries")
    endpoint = relationship("WebhookEndpoint")
    attempt_log = relationship("WebhookAttempt", back_populates="delivery", order_by="WebhookAttempt.id",
                               cascade="all, delete-orphan")


class WebhookAttempt(db.Model):
    """One HTTP request: when, the status code or the error, an excerpt of the answer."""
    __tablename__ = "webhook_attempts"
    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int | None]
    outcome: Mapped[str] = mapped_column(String(10))  # delivered | retry | failed
    redelivery: Mapped[bool] = mapped_column(default=False)  # asked for by an admin

    delivery = relationship("WebhookDelivery", back_populates="attempt_log")
