from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, deferred, mapped_column, relationship

from portal.extensions import db
from portal.timeutil import utcnow


class Email(db.Model):
    """One logged email, stored once however many mailboxes and customers it reaches."""
    __tablename__ = "emails"
    id: Mapped[int] = mapped_column(primary_key=True)
    # De-duplication key: "<message-id>" lower-cased, or "sha256:<hex>" of the content.
    dedupe_key: Mapped[str] = mapped_column(String(500), unique=True)
    message_id: Mapped[str | None] = mapped_column(String(998), index=False)
    subject: Mapped[str] = mapped_column(Text, default="")
    from_addr: Mapped[str | None] = mapped_column(String(320))
    from_name: Mapped[str | None] = mapped_column(String(500))
    to_addrs: Mapped[list] = mapped_column(JSON, default=list)  # [{"name", "address"}]
    cc_addrs: Mapped[list] = mapped_column(JSON, default=list)
    date: Mapped[datetime | None]  # the Date header, UTC
    internal_date: Mapped[datetime | None]  # when the first mailbox's server received it
    text_body: Mapped[str | None] = deferred(mapped_column(Text))
    html_body: Mapped[str | None] = deferred(mapped_column(Text))
    attachments: Mapped[list] = mapped_column(JSON, default=list)  # [{"filename","content_type","size"}]
    # The raw message, compressed (portal.mail.rawstore: Zstandard; gzip in rows written before 0002).
    raw_packed: Mapped[bytes | None] = deferred(mapped_column(LargeBinary))
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    parse_defects: Mapped[list | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    sources = relationship("EmailSource", back_populates="email", cascade="all, delete-orphan")
    activities = relationship("Activity", back_populates="email", cascade="all, delete-orphan")


class EmailSource(db.Model):
    """Where a stored email was seen: (mailbox, folder, UIDVALIDITY, UID)."""
    __tablename__ = "email_sources"
    __table_args__ = (UniqueConstraint("mailbox_id", "folder", "uidvalidity", "uid"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    email_id: Mapped[int] = mapped_column(ForeignKey("emails.id", ondelete="CASCADE"), index=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id"), index=True)
    folder: Mapped[str] = mapped_column(String(500))
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    uid: Mapped[int] = mapped_column(BigInteger)
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)

    email = relationship("Email", back_populates="sources")


class Activity(db.Model):
    """An email logged on one customer's Activities, and how it matched."""
    __tablename__ = "activities"
    __table_args__ = (
        UniqueConstraint("email_id", "customer_id"),
        Index("ix_activities_customer_date", "customer_id", "email_date"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    email_id: Mapped[int] = mapped_column(ForeignKey("emails.id", ondelete="CASCADE"))
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    mailbox_id: Mapped[int | None] = mapped_column(ForeignKey("mailboxes.id"))  # first mailbox it came from
    # The email's, seen from the synced mailbox (out: the mailbox or its owner sent it, or it is in
    # Sent), the same for every customer it is logged on (portal.mail.rules.message_direction).
    direction: Mapped[str] = mapped_column(String(3))
    matched_field: Mapped[str] = mapped_column(String(4))  # from | to | cc
    matched_address: Mapped[str] = mapped_column(String(320))
    deal_id: Mapped[int | None] = mapped_column(ForeignKey("deals.id"))  # additional customer in copy
    email_date: Mapped[datetime | None]  # copy of the email's time, for the timeline's order
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    email = relationship("Email", back_populates="activities")
    customer = relationship("Customer")
    mailbox = relationship("Mailbox")
    deal = relationship("Deal")


class OutgoingEmail(db.Model):
    """An email a rep sent from the CRM: its state through the send queue."""
    __tablename__ = "outgoing_emails"
    id: Mapped[int] = mapped_column(primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id"), index=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    email_id: Mapped[int | None] = mapped_column(ForeignKey("emails.id"))
    message_id: Mapped[str] = mapped_column(String(998))
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    cc: Mapped[list] = mapped_column(JSON, default=list)
    attachments: Mapped[list] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(10), default="queued")  # queued|sent|failed
    reason: Mapped[str | None] = mapped_column(String(40))
    detail: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
