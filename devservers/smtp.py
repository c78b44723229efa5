"""An SMTP sink (aiosmtpd) for tests and the demo: it requires AUTH (PLAIN/LOGIN with
passwords, XOAUTH2 checked by a callable) and keeps what it receives."""

from __future__ import annotations

import base64
import binascii
import errno
import logging
import threading
import time
import warnings
from collections.abc import Callable

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, AuthResult

from devservers.process import HOST, free_port

XOAUTH2_ERROR = '{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}'


class _SinkHandler:
    def __init__(self, sink: "SmtpSink"):
        self.sink = sink

    async def handle_DATA(self, server, session, envelope):
        with self.sink._lock:
            if self.sink._failures:
                self.sink._failures -= 1
                return f"{self.sink._fail_code} {self.sink._fail_text}"
            raw = bytes(envelope.original_content or envelope.content)
            self.sink.messages.append((envelope.mail_from, list(envelope.rcpt_tos), raw))
        return "250 2.0.0 OK: queued"

    async def auth_XOAUTH2(self, server, args):
        if len(args) > 1:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        else:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        user, token = _parse_xoauth2(blob.decode("utf-8", "replace"))
        if user is not None and self.sink.token_checker(user, token):
            self.sink.logins.append(("XOAUTH2", user))
            return AuthResult(success=True, auth_data=user)
        # Like Gmail: a JSON error as a challenge, the client answers empty, then 535.
        reply = await server.challenge_auth(XOAUTH2_ERROR)
        if reply is MISSING:
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False,
                          message="535 5.7.8 Username and Password not accepted")


def _parse_xoauth2(text: str) -> tuple[str | None, str]:
    user, token = None, ""
    for part in text.split("\x01"):
        if part.startswith("user="):
            user = part[5:]
        elif part.lower().startswith("auth=bearer "):
            token = part[12:]
    return user, token


def _drop_plain_auth_notice(record: logging.LogRecord) -> bool:
    return "auth_require_tls == False" not in record.getMessage()


def _reject_all(user: str, token: str) -> bool:
    return False


class SmtpSink:
    """An aiosmtpd server that requires AUTH (PLAIN/LOGIN from `users`, XOAUTH2 via
    `token_checker`) and keeps what it receives in `.messages` as (mail_from, rcpt_tos, bytes)."""

    host = HOST

    def __init__(self, users: dict[str, str] | None = None,
                 token_checker: Callable[[str, str], bool] | None = None, port: int | None = None):
        self.users: dict[str, str] = dict(users or {})
        self.token_checker = token_checker or _reject_all
        self._explicit_port = port is not None
        self.port = port or free_port()
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.logins: list[tuple[str, str]] = []  # (mechanism, user) of each successful AUTH
        self._failures = 0
        self._fail_code = 451
        self._fail_text = "4.3.0 Try again later"
        self._lock = threading.Lock()
        self._controller = None

    def __enter__(self) -> "SmtpSink":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        login = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        if login in self.users and self.users[login] == password:
            self.logins.append((mechanism, login))
            return AuthResult(success=True, auth_data=login)
        return AuthResult(success=False, handled=False)

    def start(self) -> "SmtpSink":
        if self._controller is not None:
            return self
        # Plain-text AUTH is the point of this sink; aiosmtpd warns and logs it per connection.
        warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS",
                                category=UserWarning)
        mail_log = logging.getLogger("mail.log")
        if _drop_plain_auth_notice not in mail_log.filters:
            mail_log.addFilter(_drop_plain_auth_notice)
        for attempt in range(3):
            controller = Controller(
                _SinkHandler(self), hostname=self.host, port=self.port,
                authenticator=self._authenticate, auth_required=True, auth_require_tls=False,
            )
            try:
                controller.start()
            except OSError as e:
                # the port picked in __init__ was taken since; a port given by the caller stays
                if self._explicit_port or e.errno != errno.EADDRINUSE or attempt == 2:
                    raise
                self.port = free_port()
                continue
            self._controller = controller
            return self
        raise AssertionError("unreachable")

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def fail_next(self, n: int = 1, code: int = 451, text: str = "4.3.0 Try again later") -> None:
        """The next n DATA commands answer `code text` instead of accepting."""
        with self._lock:
            self._failures, self._fail_code, self._fail_text = n, code, text

    def wait_for(self, count: int, timeout: float = 5.0) -> list[tuple[str, list[str], bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.messages)} of {count} messages arrived")
            time.sleep(0.01)
        return list(self.messages)

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()
            self.logins.clear()
            self._failures = 0
