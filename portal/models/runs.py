from datetime import date, datetime

from sqlalchemy import JSON, BigInteger, Date, Float, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.extensions import db
from portal.timeutil import utcnow

TRIGGERS = ("scheduled", "manual", "adhoc", "backfill", "resync")


class SyncRun(db.Model):
    """A sync that did something worth keeping: logged or stored mail, failed, changed the
    mailbox's state, or was asked for by a person. Kept EIS_RUN_RETENTION_DAYS, then pruned
    by the scheduler (portal/run_history.py). A quiet poll is a SyncQuietDay count instead."""
    __tablename__ = "sync_runs"
    __table_args__ = (Index("ix_sync_runs_started_at", "started_at"),)
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


class SyncQuietDay(db.Model):
    """The quiet polls of one mailbox on one (UTC) day: scheduled syncs that found nothing
    new and changed nothing. One row a mailbox a day instead of one a poll (72 a day at a
    20-minute interval); the support and rep pages show them as "N quiet polls that day"."""
    __tablename__ = "sync_quiet_days"
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    polls: Mapped[int] = mapped_column(default=0)
    imap_commands: Mapped[int] = mapped_column(BigInteger, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    first_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_at: Mapped[datetime] = mapped_column(default=utcnow)
