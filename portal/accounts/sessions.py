"""Sessions with a mailbox's own mail servers, logged in with its stored credentials: the
password, or an OAuth access token over XOAUTH2, refreshed once when the server refuses it
(DESIGN auth_failed for OAuth). The caller closes the session.

Every connection to a mailbox's servers starts here (linking, the sync, sending, the Sent
copy, support's why-check), so the deployment's host policy (mail/hosts.py: no internal
addresses unless EIS_MAIL_HOSTS_ALLOW allows them) is applied here, once."""
from __future__ import annotations

import logging
import smtplib

from flask import current_app

from portal import crypto
from portal.accounts.oauth.failures import OAuthFailure
from portal.accounts.oauth.tokens import access_token_for
from portal.mail.errors import classify_exception
from portal.mail.hosts import HostPolicy, HostRefused
from portal.mail.imap import ImapSession
from portal.mail.smtp import SmtpSession
from portal.models import Mailbox

log = logging.getLogger(__name__)
LINK_TIMEOUT_SECONDS = 10  # a person waits for the first login: connect and each read, shorter than a sync's
DEFAULT_SMTP_TIMEOUT_SECONDS = 60
# Microsoft and Google mailboxes linked by OAuth may come without SMTP settings.
PROVIDER_SMTP = {
    "microsoft": ("smtp.office365.com", 587, "starttls"),
    "google": ("smtp.gmail.com", 465, "ssl"),
}


class SmtpNotConfigured(RuntimeError):
    mail_fault = True  # the account has no SMTP server to send through: not a bug


def mail_hosts() -> HostPolicy:
    """The hosts the product may connect to (EIS_MAIL_HOSTS_ALLOW on top of the public ones)."""
    return HostPolicy.from_setting(current_app.config.get("EIS_MAIL_HOSTS_ALLOW"))


def imap_session(host: str, port: int, security: str, *, linking: bool = False) -> ImapSession:
    """A connection to an IMAP server with the deployment's host policy, time-out and private CA."""
    config = current_app.config
    timeout = config["EIS_IMAP_TIMEOUT_SECONDS"]
    try:
        return ImapSession(host, port, security, timeout=min(LINK_TIMEOUT_SECONDS, timeout) if linking else timeout,
                           ca_file=config.get("EIS_TLS_CA_FILE"), hosts=mail_hosts())
    except HostRefused as exc:
        _log_refused(exc, "IMAP")
        raise


def open_imap(mailbox: Mailbox) -> ImapSession:
    """Connect and log in with the mailbox's stored credentials."""
    session = imap_session(mailbox.imap_host, mailbox.imap_port, mailbox.imap_security)
    try:
        if mailbox.provider == "imap":
            session.login_password(mailbox.login, crypto.decrypt(mailbox.secret_encrypted))
            return session
        user = mailbox.login or mailbox.address
        try:
            session.login_xoauth2(user, access_token_for(mailbox))
        except OAuthFailure:
            raise
        except Exception as exc:
            if classify_exception(exc).reason != "auth_failed":
                raise
            log.info("mailbox %s: the IMAP server refused the access token; refreshing once", mailbox.id)
            session.login_xoauth2(user, access_token_for(mailbox, force_refresh=True))
    except BaseException:
        session.close()
        raise
    return session


def smtp_endpoint(mailbox: Mailbox) -> tuple[str | None, int | None, str]:
    if mailbox.smtp_host:
        return mailbox.smtp_host, mailbox.smtp_port or 587, mailbox.smtp_security or "starttls"
    return PROVIDER_SMTP.get(mailbox.provider, (None, None, "starttls"))


def open_smtp(mailbox: Mailbox) -> SmtpSession:
    """Connect to the mailbox's SMTP server and log in; for OAuth mailboxes a refused token is
    refreshed once and tried on a new connection."""
    session = _connect_smtp(mailbox)
    try:
        if mailbox.provider == "imap":
            session.login_password(mailbox.login or mailbox.address, crypto.decrypt(mailbox.secret_encrypted))
            return session
        user = mailbox.login or mailbox.address
        try:
            session.login_xoauth2(user, access_token_for(mailbox))
        except smtplib.SMTPAuthenticationError:
            session.close()
            session = _connect_smtp(mailbox)
            session.login_xoauth2(user, access_token_for(mailbox, force_refresh=True))
        return session
    except BaseException:
        session.close()
        raise


def _connect_smtp(mailbox: Mailbox) -> SmtpSession:
    host, port, security = smtp_endpoint(mailbox)
    if host is None:
        raise SmtpNotConfigured(f"{mailbox.address} has no SMTP server")
    config = current_app.config
    try:
        return SmtpSession(host, port, security,
                           timeout=float(config.get("EIS_SMTP_TIMEOUT_SECONDS") or DEFAULT_SMTP_TIMEOUT_SECONDS),
                           ca_file=config.get("EIS_TLS_CA_FILE"), helo=config.get("EIS_SMTP_HELO_NAME") or None,
                           hosts=mail_hosts())
    except HostRefused as exc:
        _log_refused(exc, "SMTP")
        raise


def open_system_smtp(host: str, port: int, security: str, *, timeout: float) -> SmtpSession:
    """The system account's SMTP server (EIS_NOTIFY_SMTP_URL: notification emails). The
    operator's own server, like DATABASE_URL, not a user's host: no host policy here."""
    return SmtpSession(host, port, security, timeout=timeout, ca_file=current_app.config.get("EIS_TLS_CA_FILE"))


def _log_refused(exc: HostRefused, protocol: str) -> None:
    log.warning("refused to connect to the %s server %s:%s: it resolves to %s, an internal address "
                "(EIS_MAIL_HOSTS_ALLOW allows in-house servers)", protocol, exc.host, exc.port, exc.address)
