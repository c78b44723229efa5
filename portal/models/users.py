import hashlib
import secrets
from datetime import datetime, timedelta
from typing import ClassVar

from flask import current_app, has_app_context
from flask_login import UserMixin
from sqlalchemy import ForeignKey, String, true, update
from sqlalchemy.orm import Mapped, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash

from portal.extensions import db
from portal.timeutil import utcnow

ROLES = ("rep", "support", "it", "admin")


class User(UserMixin, db.Model):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str | None] = mapped_column(String(256))
    # The two permissions an admin sets (the seed's "Activities tab" and "Emails").
    can_see_activities: Mapped[bool] = mapped_column(default=True)
    can_see_emails: Mapped[bool] = mapped_column(default=True)
    is_enabled: Mapped[bool] = mapped_column(default=True)
    # Part of every session and remember-me cookie (get_id): raising it ends them all.
    session_generation: Mapped[int] = mapped_column(default=0, server_default="0")
    time_zone: Mapped[str | None] = mapped_column(String(64))  # None: the organisation's (EIS_TIME_ZONE)
    # Emails from the service (a mailbox turned Problematic; IT's daily digest): on unless turned off.
    email_notifications: Mapped[bool] = mapped_column(default=True, server_default=true())
    last_seen_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    mailboxes = relationship("Mailbox", back_populates="owner", foreign_keys="Mailbox.user_id")

    def set_password(self, password: str) -> None:
        method = current_app.config.get("EIS_PASSWORD_HASH_METHOD", "scrypt") if has_app_context() else "scrypt"
        self.password_hash = generate_password_hash(password, method=method)

    def check_password(self, password: str) -> bool:
        return bool(self.password_hash) and check_password_hash(self.password_hash, password)

    @property
    def is_active(self) -> bool:  # flask-login: disabled users cannot sign in
        return self.is_enabled

    # The signed-in session's token (UserSession), set at sign-in and by the session loader.
    session_token: ClassVar[str | None] = None  # per instance once set; not a column

    def get_id(self) -> str:
        """What flask-login keeps in the session and the remember-me cookie: the user's id and
        the token of this browser's UserSession, so that each sign-in gets its own cookie and
        each session can be ended on the server."""
        return f"{self.id}.{self.session_token}"

    def end_sessions(self) -> None:
        """Every session and remember-me cookie of this user stops working, and earlier
        invitation links too (the caller commits)."""
        self.session_generation = (self.session_generation or 0) + 1
        db.session.execute(update(UserSession).where(UserSession.user_id == self.id,
                                                     UserSession.revoked_at.is_(None)).values(revoked_at=utcnow()))

    def __repr__(self) -> str:
        return f"<User {self.email} {self.role}>"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class UserSession(db.Model):
    """One signed-in browser: created at sign-in, ended at sign-out (or when the user is
    disabled); the session cookie and the remember-me cookie carry its token, of which only
    the SHA-256 is stored."""
    __tablename__ = "user_sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    remember: Mapped[bool] = mapped_column(default=False)
    client: Mapped[str | None] = mapped_column(String(64))  # the address it signed in from
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]

    @classmethod
    def open(cls, user: User, *, remember: bool, lifetime: timedelta, client: str | None) -> "UserSession":
        token = secrets.token_urlsafe(32)
        user.session_token = token
        return cls(user_id=user.id, token_hash=hash_token(token), remember=remember, client=(client or "")[:64],
                   expires_at=utcnow() + lifetime)


class ApiToken(db.Model):
    """A bearer token acting as its user, until it expires or is revoked; only the SHA-256
    of the token is stored."""
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))  # shown to operators to tell tokens apart
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]  # None: from before expiry existed (migration 0005 sets one)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    user = relationship("User")

    @classmethod
    def issue(cls, user: User, days: int) -> tuple["ApiToken", str]:
        token = "eis_" + secrets.token_urlsafe(32)
        return cls(user=user, token_hash=hash_token(token), prefix=token[:12],
                   expires_at=utcnow() + timedelta(days=days)), token

    @property
    def live(self) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > utcnow())
