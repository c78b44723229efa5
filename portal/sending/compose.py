"""Composing the message as it is sent, saved in Sent and stored: one set of bytes everywhere.
What the person typed is never taken as HTML. Every header value is cleaned after decoding
its encoded words (mail/headers.py), and the bytes are read back before anything uses them:
a header the product did not write refuses the send (security review, item 3)."""
from __future__ import annotations

import html
import mimetypes
import re
from datetime import datetime, timezone
from email import policy as email_policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from portal.mail import headers
from portal.mail.smtp import needs_smtputf8, wire_address
from portal.sending.checks import Attachment, Problem, SendRefused, one_line


def html_from_text(text: str) -> str:
    """The HTML alternative of what the user typed: escaped, blank lines make paragraphs,
    single line breaks <br>. The user's text is never taken as HTML."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    paragraphs = [p for p in re.split(r"\n[ \t]*\n", text) if p.strip()]
    body = "\n".join(
        "<p>" + "<br>\n".join(html.escape(line, quote=True) for line in p.strip("\n").split("\n")) + "</p>"
        for p in paragraphs
    )
    return ('<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head>\n'
            f'<body>\n{body}\n</body></html>\n')


def _address(name: str, address: str) -> Address:
    # Names come from stored data (the CRM's customer, the rep's own name; Cc names are
    # checked when typed): cleaned, not refused, so that an old name never blocks sending.
    local, _, domain = wire_address(address).rpartition("@")
    return Address(display_name=one_line(headers.clean(name)), username=local, domain=domain)


def compose(*, from_name: str, from_address: str, to_name: str, to_address: str,
            cc: list[tuple[str, str]], subject: str, body: str, attachments: list[Attachment],
            when: datetime | None = None) -> EmailMessage:
    """The message as it is sent, saved in Sent and stored: one set of bytes everywhere."""
    utf8 = needs_smtputf8([from_address, to_address, *(a for _, a in cc)])
    msg = EmailMessage(policy=email_policy.SMTPUTF8 if utf8 else email_policy.SMTP)
    msg["From"] = _address(from_name, from_address)
    msg["To"] = _address(to_name, to_address)
    if cc:
        msg["Cc"] = [_address(name, address) for name, address in cc]
    msg["Subject"] = one_line(headers.clean(subject))  # checks.py refused an unsafe one already
    msg["Date"] = format_datetime(when or datetime.now(timezone.utc))
    msg["Message-ID"] = make_msgid(domain=from_address.rpartition("@")[2])
    text = body.replace("\r\n", "\n").replace("\r", "\n")
    # Quoted-printable keeps the message 7-bit: no server's 8BITMIME support is assumed.
    msg.set_content(text if text.endswith("\n") else text + "\n", cte="quoted-printable")
    msg.add_alternative(html_from_text(body), subtype="html", cte="quoted-printable")
    for item in attachments:
        maintype, _, subtype = item.content_type.partition("/")
        msg.add_attachment(item.data, maintype=maintype, subtype=subtype, filename=clean_filename(item.filename))
    for part in msg.walk():
        if part is not msg:
            del part["MIME-Version"]  # the email package repeats it on parts; it belongs at the top only
    return msg


def wire_bytes(msg: EmailMessage) -> bytes:
    """The message's bytes, read back first: raises SendRefused unless each part carries
    exactly the headers compose() wrote (a defence in depth against CVE-2024-6923, header
    folding that writes a line break as it is)."""
    try:
        raw = msg.as_bytes()
    except Exception as exc:  # the email package refusing a value: a refusal, never a 500
        raise SendRefused([message_invalid(f"it could not be written ({type(exc).__name__})")]) from None
    mismatch = headers.unexpected_headers(msg, raw)
    if mismatch:
        raise SendRefused([message_invalid(mismatch)])
    return raw


def message_invalid(detail: str) -> Problem:
    return Problem("message_invalid",
                   f"The email was not sent: put together, {detail}, so it would not say what was written. "
                   "Remove unusual characters (line breaks, encoded words like =?utf-8?...?=) from the subject, "
                   "Cc, names and file names and try again; if it happens again, tell support.",
                   422, extra={"detail": detail})


def clean_filename(name: str | None) -> str:
    """A display name for an uploaded file: its encoded words decoded, no path, no control
    characters. Cleaned rather than refused: a file's name is seldom chosen by the sender."""
    name = re.split(r"[\\/]", headers.clean(name))[-1]
    name = name.strip().strip(".").strip() or "attachment"
    return name[:200]


def content_type_of(filename: str, declared: str | None) -> str:
    declared = (declared or "").split(";")[0].strip().lower()
    if re.fullmatch(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*", declared) \
            and not declared.startswith("multipart/") and not declared.startswith("message/"):
        return declared
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"
