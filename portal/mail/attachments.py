"""An attachment's bytes, taken from the stored raw message.

Only the list of attachments (name, type, size) is kept in the database; the bytes come
from re-parsing `Email.raw_packed` and walking the MIME tree in the same order as
`portal.mail.parse` did when it listed them, so attachment n here is attachment n there.
"""
from __future__ import annotations

from email.message import Message
from email.parser import BytesParser
from email.policy import compat32

from portal.mail import rawstore
from portal.mail.parse import filename_of  # the very function that named the attachments

_MAX_DEPTH = 50


def _parts(raw: bytes) -> list[Message]:
    """The MIME parts parse.py lists as attachments, in its order."""
    found: list[Message] = []
    seen_text = {"text/plain": False, "text/html": False}

    def walk(part: Message, depth: int) -> None:
        if depth > _MAX_DEPTH:
            return
        try:
            ctype = part.get_content_type()
            if ctype.startswith("message/"):
                found.append(part)
            elif part.is_multipart():
                for sub in part.get_payload():
                    walk(sub, depth + 1)
            else:
                filename = filename_of(part, [])
                inline_text = (ctype in seen_text and part.get_content_disposition() != "attachment"
                               and not filename)
                if ctype.startswith("multipart/"):
                    return  # a broken multipart shown as body text, not an attachment
                if inline_text:
                    seen_text[ctype] = True  # the first is the body; a later one is neither
                    return
                found.append(part)
        except Exception:  # noqa: BLE001 - parse.py skipped a broken part too
            return

    walk(BytesParser(policy=compat32).parsebytes(raw), 0)
    return found


def _payload(part: Message) -> bytes:
    if part.get_content_type().startswith("message/"):
        inner = part.get_payload()
        if isinstance(inner, list):
            return b"".join(m.as_bytes() for m in inner)
        return part.get_payload(decode=True) or b""
    return part.get_payload(decode=True) or b""


def attachment_bytes(raw_packed: bytes, index: int, listed: list[dict]) -> bytes | None:
    """The bytes of attachment `index` of the stored list `listed`, or None if not found."""
    if not raw_packed or not 0 <= index < len(listed):
        return None
    try:
        raw = rawstore.unpack(raw_packed)
    except rawstore.UnreadableRaw:
        return None
    parts = _parts(raw)
    want = listed[index]
    if index < len(parts):
        data = _payload(parts[index])
        if len(data) == want.get("size", len(data)) or want.get("content_type", "").startswith("message/"):
            return data
    # The two walks disagree (a part broke differently): find it by name and size.
    for part in parts:
        data = _payload(part)
        if filename_of(part, []) == want.get("filename") and len(data) == want.get("size"):
            return data
    return None
