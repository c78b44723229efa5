"""Sending one notification (the job's body) through the system SMTP account
(EIS_NOTIFY_SMTP_URL), never through anyone's mailbox: a Problematic mailbox cannot send.

What it says is decided when it is sent: a mailbox reconnected since the sweep, a recipient
who turned notifications off, a digest with nothing left to say: each is skipped, not sent.
A transient fault raises so that RQ retries; a refusal, or the last attempt, marks it failed.
The account's password is never logged: only its host and port are named.
"""
from __future__ import annotations

import logging
import smtplib
from datetime import datetime, timezone
from email import policy as email_policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from portal.accounts.sessions import open_system_smtp
from portal.extensions import db
from portal.mail import headers
from portal.mail.smtp import needs_smtputf8, wire_address
from portal.models import MailboxStateChange, Notification
from portal.models.mailboxes import PROBLEMATIC
from portal.models.notifications import FAILED, IT_DIGEST, MAILBOX_PROBLEMATIC, PENDING, SENT, SKIPPED
from portal.notify import config
from portal.notify.messages import Email, digest_email, digest_groups, problematic_email
from portal.notify.sweep import incident_id_of, long_problematic
from portal.timeutil import utcnow

log = logging.getLogger(__name__)
SMTP_TIMEOUT_SECONDS = 30


class NotifySendFailed(Exception):
    """A transient fault of the system SMTP account: RQ retries the job."""


def deliver(notification_id: int, *, last_attempt: bool = True) -> dict:
    try:
        return _deliver(notification_id, last_attempt)
    except NotifySendFailed:
        raise
    except Exception as exc:
        if last_attempt:  # a bug: the row is finished, so the sweep does not queue it again and again
            db.session.rollback()
            notification = db.session.get(Notification, notification_id)
            if notification is not None and notification.status == PENDING:
                _finish(notification, FAILED, f"An internal error ({type(exc).__name__}); see the failed job "
                                              f"notify-{notification_id} on Admin → Health.")
        raise


def _deliver(notification_id: int, last_attempt: bool) -> dict:
    notification = db.session.get(Notification, notification_id)
    if notification is None or notification.status != PENDING:
        return {"notification_id": notification_id, "status": getattr(notification, "status", "missing")}
    email, why_not = _email_for(notification)
    if email is None:
        return _finish(notification, SKIPPED, why_not)
    notification.attempts += 1
    notification.subject = email.subject[:300]
    try:
        send(notification.user.email, email)
    except (smtplib.SMTPException, OSError, config.NotifyConfigError) as exc:
        words = _words(exc)
        permanent = isinstance(exc, (smtplib.SMTPRecipientsRefused, config.NotifyConfigError)) or \
            (isinstance(exc, smtplib.SMTPResponseException) and 500 <= exc.smtp_code < 600)
        log.warning("notification %s to user %s not sent through %s: %s", notification.id, notification.user_id,
                    _where(), words)
        if permanent or last_attempt:
            return _finish(notification, FAILED, words)
        notification.detail = words
        db.session.commit()
        raise NotifySendFailed(words) from None
    notification.sent_at = utcnow()
    log.info("notification %s (%s) sent to user %s through %s", notification.id, notification.kind,
             notification.user_id, _where())
    return _finish(notification, SENT, None)


def _email_for(notification: Notification) -> tuple[Email | None, str | None]:
    """The email as it reads now, or (None, why it is no longer sent)."""
    if not config.enabled():
        return None, "Notifications are off: " + "; ".join(config.problems()) + "."
    user = notification.user
    if not user.is_enabled:
        return None, "The recipient's account is disabled."
    if not user.email_notifications:
        return None, "The recipient turned email notifications off."
    if notification.kind == MAILBOX_PROBLEMATIC:
        mailbox = notification.mailbox
        if mailbox is None or mailbox.state != PROBLEMATIC \
                or incident_id_of(mailbox.id) != notification.state_change_id:
            return None, "The mailbox is no longer in this incident (reconnected or deleted)."
        if mailbox.user_id != user.id:
            return None, "The mailbox has another owner now."
        return problematic_email(user, mailbox, db.session.get(MailboxStateChange, notification.state_change_id)), None
    if notification.kind == IT_DIGEST:
        entries = long_problematic(utcnow())
        if not entries:
            return None, "No account is Problematic for over 24 hours any more."
        return digest_email(user, digest_groups(entries)), None
    return None, f"Unknown kind {notification.kind!r}."


def send(to: str, email: Email) -> None:
    """One email through the system SMTP account (a text and an HTML part)."""
    account = config.account()
    sender = config.from_address()
    if sender is None:
        raise config.NotifyConfigError("EIS_NOTIFY_FROM is not set to an address")
    name, address = sender
    utf8 = needs_smtputf8([address, to])
    msg = EmailMessage(policy=email_policy.SMTPUTF8 if utf8 else email_policy.SMTP)
    local, _, domain = wire_address(address).rpartition("@")
    msg["From"] = Address(display_name=headers.clean(name), username=local, domain=domain)
    to_local, _, to_domain = wire_address(to).rpartition("@")
    msg["To"] = Address(username=to_local, domain=to_domain)
    msg["Subject"] = headers.clean(email.subject)
    msg["Date"] = format_datetime(datetime.now(timezone.utc))
    msg["Message-ID"] = make_msgid(domain=domain)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to the system account
    msg.set_content(email.text, cte="quoted-printable")
    msg.add_alternative(email.html, subtype="html", cte="quoted-printable")
    with open_system_smtp(account.host, account.port, account.security, timeout=SMTP_TIMEOUT_SECONDS) as session:
        if account.login:
            session.login_password(account.login, account.password or "")
        refused = session.send(address, [to], msg.as_bytes())
    if refused:
        raise smtplib.SMTPRecipientsRefused(refused)


def _finish(notification: Notification, status: str, detail: str | None) -> dict:
    notification.status, notification.detail = status, detail
    db.session.commit()
    return {"notification_id": notification.id, "status": status}


def _where() -> str:
    try:
        return config.account().where
    except (config.NotifyConfigError, KeyError):
        return "(no SMTP account)"


def _words(exc: BaseException) -> str:
    """The server's words, never the account's password (smtplib does not repeat it)."""
    if isinstance(exc, smtplib.SMTPResponseException):
        message = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
        return f"{exc.smtp_code} {message}"[:2000]
    return f"{type(exc).__name__}: {exc}"[:2000]
