from datetime import datetime

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.extensions import db
from portal.timeutil import utcnow

PROVIDERS = ("imap", "microsoft", "google")
# The states of portal/accounts/state.py's machine (the only writer of them).
PENDING, ACTIVE, PROBLEMATIC, DISCONNECTED = "pending", "active", "problematic", "disconnected"
STATES = (PENDING, ACTIVE, PROBLEMATIC, DISCONNECTED)
SYNCABLE = (PENDING, ACTIVE)  # the states the scheduler syncs
SECURITY = ("ssl", "starttls", "none")


class Mailbox(db.Model):
    """A connected mailbox. Rows are never deleted: a disconnected mailbox keeps its
    address, which stays an internal address for the ignore rule."""
    __tablename__ = "mailboxes"
    __table_args__ = (
        Index("ix_mailboxes_state_next_sync", "state", "next_sync_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    address: Mapped[str] = mapped_column(String(320), index=True)  # lower-cased
    provider: Mapped[str] = mapped_column(String(16), default="imap")
    login: Mapped[str | None] = mapped_column(String(320))
    imap_host: Mapped[str | None] = mapped_column(String(255))
    imap_port: Mapped[int | None]
    imap_security: Mapped[str | None] = mapped_column(String(10))
    smtp_host: Mapped[str | None] = mapped_column(String(255))
    smtp_port: Mapped[int | None]
    smtp_security: Mapped[str | None] = mapped_column(String(10))
    # Password, or the OAuth token set as JSON, encrypted with EIS_ENCRYPTION_KEYS.
    secret_encrypted: Mapped[str | None] = mapped_column(Text)
    token_expires_at: Mapped[datetime | None]
    token_refreshed_at: Mapped[datetime | None]
    token_refresh_failures: Mapped[int] = mapped_column(default=0)
    scopes_granted: Mapped[list | None] = mapped_column(JSON)
    capabilities: Mapped[list | None] = mapped_column(JSON)

    state: Mapped[str] = mapped_column(String(16), default="pending")
    reason: Mapped[str | None] = mapped_column(String(40))
    detail: Mapped[str | None] = mapped_column(Text)  # the provider's own words

    connected_at: Mapped[datetime] = mapped_column(default=utcnow)
    connected_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    backfill_since: Mapped[datetime | None]  # the window start fixed at first connection
    last_sync_at: Mapped[datetime | None]
    last_success_at: Mapped[datetime | None]
    next_sync_at: Mapped[datetime | None]
    consecutive_failures: Mapped[int] = mapped_column(default=0)
    # Messages the last day's syncs saw, and when that was counted: the scheduler's measure
    # of how busy the mailbox is (portal/run_history.py), without summing runs each poll.
    recent_messages: Mapped[int] = mapped_column(default=0)
    recent_messages_at: Mapped[datetime | None]
    disconnected_at: Mapped[datetime | None]
    # An admin took the address out of the connected-mailbox registry (it was connected by
    # someone who does not own it): email involving it is no longer internal on its account.
    released_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    owner = relationship("User", back_populates="mailboxes", foreign_keys=[user_id])
    connected_by = relationship("User", foreign_keys=[connected_by_id])
    checkpoints = relationship("FolderCheckpoint", back_populates="mailbox",
                               cascade="all, delete-orphan", order_by="FolderCheckpoint.name")
    runs = relationship("SyncRun", back_populates="mailbox", order_by="desc(SyncRun.id)",
                        lazy="dynamic")
    state_changes = relationship("MailboxStateChange", back_populates="mailbox",
                                 order_by="desc(MailboxStateChange.id)", lazy="dynamic")

    @property
    def is_syncable(self) -> bool:
        return self.state in SYNCABLE

    def __repr__(self) -> str:
        return f"<Mailbox {self.id} {self.address} {self.state}>"


class MailboxStateChange(db.Model):
    __tablename__ = "mailbox_state_changes"
    id: Mapped[int] = mapped_column(primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(40))
    detail: Mapped[str | None] = mapped_column(Text)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))

    mailbox = relationship("Mailbox", back_populates="state_changes")


class FolderCheckpoint(db.Model):
    """How far one folder of a mailbox has been synced.

    New mail: everything with UID > last_uid is processed (ascending).
    Back-fill: UIDs <= backfill_below_uid that are in the window are processed newest
    first; backfill_below_uid moves down as batches commit; None once done.
    """
    __tablename__ = "folder_checkpoints"
    __table_args__ = (UniqueConstraint("mailbox_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id"), index=True)
    name: Mapped[str] = mapped_column(String(500))
    special_use: Mapped[str | None] = mapped_column(String(20))
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    uidnext: Mapped[int | None] = mapped_column(BigInteger)
    highestmodseq: Mapped[int | None] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    backfill_below_uid: Mapped[int | None] = mapped_column(BigInteger)
    backfill_total: Mapped[int | None]
    backfill_done: Mapped[int] = mapped_column(default=0)
    messages: Mapped[int | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    mailbox = relationship("Mailbox", back_populates="checkpoints")
