from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.extensions import db
from portal.timeutil import utcnow

# What a notification is about (portal/notify/).
MAILBOX_PROBLEMATIC = "mailbox_problematic"  # to a mailbox's owner, once per incident
IT_DIGEST = "it_digest"  # to an IT user, at most once a day
KINDS = (MAILBOX_PROBLEMATIC, IT_DIGEST)
# pending: queued for sending; sent; skipped: no longer true or opted out when its turn came;
# failed: the system SMTP account refused it, or the last retry failed.
PENDING, SENT, SKIPPED, FAILED = "pending", "sent", "skipped", "failed"


class Notification(db.Model):
    """One email the service owes someone. `dedupe_key` is unique: the incident (the
    MailboxStateChange that made a mailbox Problematic) or the day and recipient of a digest,
    so that two schedulers, a retry or a restart never write (and so never send) it twice."""
    __tablename__ = "notifications"
    __table_args__ = (
        Index("ix_notifications_status", "status"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    dedupe_key: Mapped[str] = mapped_column(String(120), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)  # the recipient
    mailbox_id: Mapped[int | None] = mapped_column(ForeignKey("mailboxes.id"))
    state_change_id: Mapped[int | None] = mapped_column(ForeignKey("mailbox_state_changes.id"))
    day: Mapped[str | None] = mapped_column(String(10))  # a digest's day, YYYY-MM-DD in EIS_TIME_ZONE
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    detail: Mapped[str | None] = mapped_column(Text)  # why skipped or failed (never credentials)
    subject: Mapped[str | None] = mapped_column(String(300))  # as sent
    attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]

    user = relationship("User")
    mailbox = relationship("Mailbox")

    def __repr__(self) -> str:
        return f"<Notification {self.id} {self.kind} {self.status}>"
