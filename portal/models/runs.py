from datetime import datetime

from sqlalchemy import JSON, BigInteger, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.extensions import db
from portal.timeutil import utcnow

TRIGGERS = ("scheduled", "manual", "adhoc", "backfill", "resync")


class SyncRun(db.Model):
    __tablename__ = "sync_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id"), index=True)
    trigger: Mapped[str] = mapped_column(String(16))
    requested_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    job_id: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default="running")  # running|succeeded|failed
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    phase: Mapped[str | None] = mapped_column(String(40))  # e.g. "backfill INBOX"
    progress_done: Mapped[int] = mapped_column(default=0)
    progress_total: Mapped[int] = mapped_column(default=0)
    seen: Mapped[int] = mapped_column(default=0)
    logged: Mapped[int] = mapped_column(default=0)
    duplicates: Mapped[int] = mapped_column(default=0)
    ignored: Mapped[dict | None] = mapped_column(JSON)  # reason -> count
    bad_messages: Mapped[int] = mapped_column(default=0)
    bytes_fetched: Mapped[int] = mapped_column(BigInteger, default=0)
    imap_commands: Mapped[int] = mapped_column(default=0)
    error_class: Mapped[str | None] = mapped_column(String(40))
    error_detail: Mapped[str | None] = mapped_column(Text)
    bad_message_log: Mapped[list | None] = mapped_column(JSON)  # [{folder, uid, reason}]

    mailbox = relationship("Mailbox", back_populates="runs")
    requested_by = relationship("User")

    @property
    def duration_seconds(self) -> float | None:
        end = self.finished_at or utcnow()
        return (end - self.started_at).total_seconds()
