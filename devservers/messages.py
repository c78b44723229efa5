"""Test messages: make_message builds an RFC 5322 message from a few keyword arguments."""

from __future__ import annotations

import email.policy
import email.utils
from collections.abc import Sequence
from datetime import datetime
from email.message import EmailMessage


def _addresses(value) -> str:
    """'a@x', ('Name', 'a@x') or a list of those -> one header value."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, str) for v in value) \
            and "@" in value[1] and "@" not in value[0]:
        return email.utils.formataddr(value)
    return ", ".join(_addresses(v) for v in value)


def make_message(*, from_, to, cc=(), subject: str, body: str = "Hello",
                 message_id: str | None | bool = None, date: datetime | None = None,
                 html: str | None = None, attachments: Sequence[tuple] = (),
                 in_reply_to: str | None = None, references: str | Sequence[str] | None = None,
                 headers: dict[str, str] | None = None) -> bytes:
    """An RFC 5322 message (CRLF line ends).

    Addresses: 'Jiří Novák <jiri@example.test>', ('Jiří Novák', 'jiri@example.test') or lists.
    message_id: None makes one, False leaves the header out, a string is used as given.
    attachments: (filename, content_type, data) tuples.
    """
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = _addresses(from_)
    to_value = _addresses(to)
    if to_value:
        msg["To"] = to_value
    cc_value = _addresses(cc)
    if cc_value:
        msg["Cc"] = cc_value
    msg["Subject"] = subject
    msg["Date"] = email.utils.format_datetime(date or datetime.now().astimezone())
    if message_id is None:
        msg["Message-ID"] = email.utils.make_msgid(domain="example.test")
    elif message_id:
        msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = references if isinstance(references, str) else " ".join(references)
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    for filename, content_type, data in attachments:
        maintype, _, subtype = content_type.partition("/")
        if isinstance(data, str):
            data = data.encode()
        msg.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream",
                           filename=filename)
    return msg.as_bytes()
