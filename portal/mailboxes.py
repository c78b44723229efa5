"""Linking, reconnecting and disconnecting mailboxes, and their state changes."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from flask import current_app
from sqlalchemy import select

from portal import crypto, runtime_settings
from portal.extensions import db
from portal.mail.errors import Classified, classify_exception
from portal.mail.imap import ImapSession
from portal.models import Mailbox, MailboxStateChange, User
from portal.models.audit import record
from portal.timeutil import utcnow


@dataclass
class ImapSettings:
    address: str
    login: str
    password: str
    imap_host: str
    imap_port: int
    imap_security: str
    smtp_host: str | None = None
    smtp_port: int | None = None
    smtp_security: str | None = None


class LinkError(Exception):
    """Linking refused; `code` is for the API, the message for a person (with the server's
    words in it); `words` the sentence alone, for pages that show the server's words apart."""

    def __init__(self, code: str, message: str, status: int = 422, classified: Classified | None = None,
                 words: str | None = None):
        super().__init__(message)
        self.code, self.status, self.classified = code, status, classified
        self.words = words or message


def open_session(mailbox: Mailbox) -> ImapSession:
    """Connect and log in with the mailbox's stored credentials (the caller closes it)."""
    session = ImapSession(mailbox.imap_host, mailbox.imap_port, mailbox.imap_security,
                          timeout=current_app.config["EIS_IMAP_TIMEOUT_SECONDS"],
                          ca_file=current_app.config.get("EIS_TLS_CA_FILE"))
    try:
        if mailbox.provider == "imap":
            session.login_password(mailbox.login, crypto.decrypt(mailbox.secret_encrypted))
        else:
            from portal.oauth import login_imap  # OAuth providers: XOAUTH2, refreshed once if refused

            login_imap(session, mailbox)
    except BaseException:
        session.close()
        raise
    return session


def try_login(settings: ImapSettings) -> list[str]:
    """Log in once with the given credentials; return the server's capabilities."""
    try:
        with ImapSession(settings.imap_host, settings.imap_port, settings.imap_security,
                         timeout=min(30, current_app.config["EIS_IMAP_TIMEOUT_SECONDS"]),
                         ca_file=current_app.config.get("EIS_TLS_CA_FILE")) as session:
            session.login_password(settings.login, settings.password)
            return sorted(session.capabilities())
    except Exception as exc:  # every failure is classified and told to the user
        classified = classify_exception(exc)
        code = {"auth_failed": "authentication_failed", "tls_error": "tls_failed",
                "server_unreachable": "connection_failed"}.get(classified.reason, classified.reason)
        raise LinkError(code, f"{_link_words(classified)} The server said: {classified.detail}", status=422,
                        classified=classified, words=_link_words(classified)) from None


def _link_words(c: Classified) -> str:
    return {
        "authentication_failed": "The mail server refused the login and password.",
        "auth_failed": "The mail server refused the login and password.",
        "tls_error": "A secure (TLS) connection to the mail server failed; check the port and security setting.",
        "server_unreachable": "The mail server could not be reached; check the host name and port.",
        "imap_disabled": "The server refuses IMAP for this account; IT must allow third-party email clients.",
    }.get(c.reason, "The mail server refused the connection.")


def link_imap_mailbox(user: User, settings: ImapSettings) -> tuple[Mailbox, bool]:
    """Link (or reconnect) a password mailbox for `user`. Credentials are tried first.

    Returns (mailbox, reconnected). A Problematic mailbox of the same user and address is
    reconnected in place, keeping its checkpoints and history: no gap, no duplicate.
    """
    mine = db.session.scalars(select(Mailbox).where(
        Mailbox.address == settings.address, Mailbox.state != "disconnected")).all()
    others = [m for m in mine if m.user_id != user.id]
    if others:
        raise LinkError("mailbox_taken", f"{settings.address} is already connected by another user.", status=409)
    existing = next(iter(mine), None)
    if existing is not None and existing.state != "problematic":
        raise LinkError("already_connected", f"{settings.address} is already connected to your account.", status=409)
    capabilities = try_login(settings)
    mailbox = existing or Mailbox(user_id=user.id, address=settings.address, provider="imap",
                                  connected_by_id=user.id)
    for field in ("login", "imap_host", "imap_port", "imap_security", "smtp_host", "smtp_port", "smtp_security"):
        setattr(mailbox, field, getattr(settings, field))
    mailbox.secret_encrypted = crypto.encrypt(settings.password)
    mailbox.capabilities = capabilities
    start_or_reconnect(mailbox, user, reconnect=existing is not None)
    return mailbox, existing is not None


def start_or_reconnect(mailbox: Mailbox, user: User, *, reconnect: bool, **audit) -> None:
    """The common end of linking, by password or OAuth: a new mailbox gets its back-fill
    window and first state; a reconnected one goes back to syncing where it stopped."""
    if not reconnect:
        now = utcnow()
        mailbox.connected_at = now
        mailbox.backfill_since = now - timedelta(days=runtime_settings.get("backfill_days"))
        db.session.add(mailbox)
        db.session.flush()
        set_state(mailbox, "pending", actor=user, first=True)
    else:
        set_state(mailbox, "active" if mailbox.last_success_at else "pending", actor=user)
    record("mailbox_reconnected" if reconnect else "mailbox_connected", user, mailbox,
           address=mailbox.address, provider=mailbox.provider, **audit)
    mailbox.consecutive_failures = 0
    mailbox.next_sync_at = utcnow()


def disconnect(mailbox: Mailbox, actor: User) -> None:
    """Credentials wiped, address kept as internal, logged email kept (seed: delete)."""
    mailbox.secret_encrypted = None
    mailbox.token_expires_at = None
    mailbox.next_sync_at = None
    mailbox.disconnected_at = utcnow()
    set_state(mailbox, "disconnected", actor=actor)
    record("mailbox_deleted", actor, mailbox, address=mailbox.address)


def set_state(mailbox: Mailbox, state: str, *, reason: str | None = None, detail: str | None = None,
              actor: User | None = None, first: bool = False) -> None:
    """Change the state; every change (and the first state) is kept in the state history."""
    if first or (mailbox.state, mailbox.reason) != (state, reason):
        db.session.add(MailboxStateChange(mailbox_id=mailbox.id, from_state=None if first else mailbox.state,
                                          to_state=state, reason=reason, detail=detail,
                                          actor_id=getattr(actor, "id", None)))
    mailbox.state, mailbox.reason, mailbox.detail = state, reason, detail
    if state in ("problematic", "disconnected"):
        mailbox.next_sync_at = None


def internal_addresses() -> frozenset[str]:
    """Every mailbox address ever connected, by anyone, in any state (DESIGN rule 6)."""
    return frozenset(db.session.scalars(select(Mailbox.address).distinct()).all())
