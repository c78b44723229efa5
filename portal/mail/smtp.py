"""Talking SMTP: connect (SSL, STARTTLS or plain), log in (password or XOAUTH2), send bytes.

Thin on purpose, as imap.py is: the protocol and plain data; the caller decides. Every
socket has a time-out. No Flask here: the caller passes the settings.
"""
from __future__ import annotations

import base64
import smtplib
import socket
import ssl

from portal.mail.hosts import HostPolicy, Target
from portal.mail.xoauth2 import Xoauth2


def wire_address(address: str) -> str:
    """The address as SMTP and headers carry it: an international domain in its ASCII
    (punycode) form, so that only a non-ASCII local part needs SMTPUTF8."""
    local, _, domain = address.rpartition("@")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            pass  # left as typed: SMTPUTF8 carries it
    return f"{local}@{domain}"


def needs_smtputf8(addresses: list[str]) -> bool:
    return any(not wire_address(a).isascii() for a in addresses)


class NotSmtpServer(smtplib.SMTPException):
    """Something answered, but not as an SMTP server: said in words, never with its bytes."""

    def __init__(self, host: str, port: int):
        super().__init__(f"The server at {host}:{port} did not answer as an SMTP server.")


class _Smtp(smtplib.SMTP):
    """smtplib's connection, opened to the checked address (hosts.Target) while `_host` stays
    the name, for TLS (SNI and the certificate check, STARTTLS's too); a greeting that does not
    start with a reply code fails at once, without its bytes."""

    def __init__(self, host: str, port: int, *, target: Target | None, **kwargs):
        self._target, self._greeted, self._port_asked = target, False, port
        super().__init__(host, port, **kwargs)

    def _get_socket(self, host, port, timeout):
        if self._target is None:
            return socket.create_connection((host, port), timeout, self.source_address)
        return self._target.connect(timeout)

    def getreply(self):
        if self._greeted:
            return super().getreply()
        self._greeted = True
        if self.file is None:
            self.file = self.sock.makefile("rb")
        try:
            head = self.file.peek(3)[:3]
        except OSError as exc:
            self.close()
            raise smtplib.SMTPServerDisconnected(f"Connection unexpectedly closed: {exc}") from None
        if head and not head.isdigit():
            self.close()
            raise NotSmtpServer(self._host, self._port_asked)
        code, message = super().getreply()
        if code == -1:  # not a reply code: smtplib would show the bytes
            self.close()
            raise NotSmtpServer(self._host, self._port_asked)
        return code, message


class _SmtpSsl(_Smtp, smtplib.SMTP_SSL):
    def _get_socket(self, host, port, timeout):
        return self.context.wrap_socket(_Smtp._get_socket(self, host, port, timeout), server_hostname=self._host)


class SmtpSession:
    """A connected SMTP session (EHLO done, TLS set up as asked). Use as a context manager.

    With `hosts` (the product always passes one: accounts/sessions.py) the host is resolved
    and checked once and the connection goes to the checked address (HostRefused if it is
    internal and not allowed); without it, it is connected by name (tests, tools)."""

    def __init__(self, host: str, port: int, security: str, *, timeout: float = 60,
                 ca_file: str | None = None, helo: str | None = None, hosts: HostPolicy | None = None):
        target = hosts.check(host, port) if hosts is not None else None
        context = ssl.create_default_context(cafile=ca_file) if security in ("ssl", "starttls") else None
        if security == "ssl":
            self.smtp = _SmtpSsl(host, port, target=target, local_hostname=helo, timeout=timeout, context=context)
        else:
            self.smtp = _Smtp(host, port, target=target, local_hostname=helo, timeout=timeout)
        try:
            self.smtp.ehlo()
            if security == "starttls":
                self.smtp.starttls(context=context)
                self.smtp.ehlo()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "SmtpSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def login_password(self, login: str, password: str) -> None:
        """AUTH PLAIN in UTF-8 (smtplib's own login() refuses non-ASCII passwords); other
        mechanisms through smtplib when the server offers no PLAIN."""
        smtp = self.smtp
        if not smtp.has_extn("auth"):
            raise smtplib.SMTPNotSupportedError("The SMTP server offers no AUTH on this connection "
                                                "(it may need STARTTLS or SSL).")
        mechanisms = smtp.esmtp_features.get("auth", "").upper().split()
        if "PLAIN" not in mechanisms:
            smtp.login(login, password)
            return
        blob = base64.b64encode(f"\0{login}\0{password}".encode("utf-8")).decode("ascii")
        code, response = smtp.docmd("AUTH", "PLAIN " + blob)
        if code not in (235, 503):  # 503: already authenticated
            raise smtplib.SMTPAuthenticationError(code, response)

    def login_xoauth2(self, user: str, access_token: str) -> None:
        """AUTH XOAUTH2; a refusal keeps the server's JSON error in the exception's words."""
        exchange = Xoauth2(user, access_token)
        try:
            self.smtp.auth("XOAUTH2", exchange.answer, initial_response_ok=True)
        except smtplib.SMTPAuthenticationError as exc:
            if not exchange.error:
                raise
            words = exc.smtp_error
            words = words.decode("utf-8", "replace") if isinstance(words, bytes) else str(words)
            raise smtplib.SMTPAuthenticationError(exc.smtp_code, f"{words} {exchange.error}".encode()) from None

    def send(self, sender: str, recipients: list[str], raw: bytes) -> dict:
        """Send the message's bytes; returns the recipients the server refused (others got it)."""
        recipients = [wire_address(a) for a in recipients]
        options = ["SMTPUTF8"] if needs_smtputf8([sender, *recipients]) else []
        return self.smtp.sendmail(wire_address(sender), recipients, raw, mail_options=options)

    def close(self) -> None:
        try:
            self.smtp.quit()
        except Exception:  # the connection may already be gone; nothing left to do
            try:
                self.smtp.close()
            except Exception:
                pass
