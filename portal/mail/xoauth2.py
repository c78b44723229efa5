"""The XOAUTH2 SASL exchange of Google and Microsoft, for IMAP and SMTP alike.

The client sends `user=<address>^Aauth=Bearer <token>^A^A`. A server that refuses answers
with a challenge holding a JSON error ({"status":"401","schemes":"bearer",...}); the client
acknowledges it with an empty line, and the server then fails the command with its words.
imapclient's oauth2_login and smtplib's login resend the credentials instead and lose that
JSON: the sessions in imap.py and smtp.py run this exchange and keep it (`error`).
"""
from __future__ import annotations


class Xoauth2:
    """One XOAUTH2 exchange: `answer` is the SASL callback; `error` what the server said."""

    def __init__(self, user: str, access_token: str):
        self.initial = f"user={user}\x01auth=Bearer {access_token}\x01\x01"
        self._sent = False
        self._said: list[str] = []

    def answer(self, challenge: bytes | str | None = None) -> str:
        """The initial response first; to any later challenge (the server's JSON error), an
        empty line, after keeping the challenge."""
        if not self._sent:
            self._sent = True
            return self.initial
        if challenge:
            self._said.append(challenge.decode("utf-8", "replace") if isinstance(challenge, bytes)
                              else str(challenge))
        return ""

    @property
    def error(self) -> str:
        """The server's JSON error, if it sent one."""
        return " ".join(s for s in self._said if s).strip()
