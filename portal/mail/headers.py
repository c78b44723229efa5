"""Header values judged by what they decode to (security review, item 3).

Python's email package decodes RFC 2047 encoded words ("=?utf-8?q?...?=") in the values
it is handed -- a Subject, a display name, an address's local part, a file name -- and,
without the fix for CVE-2024-6923 (Python 3.11.7 lacks it), writes a decoded line break
as a real one: "=?utf-8?q?Hi=0D=0ABcc:_x@evil.test?=" becomes a Subject and a Bcc header.
So a value is safe only when none of its decodings holds a control character, and a value
is cleaned by decoding it first. `unexpected_headers` re-reads a composed message's own
bytes, the last line of defence against whatever the cleaning missed.

Pure: no Flask, no database.
"""
from __future__ import annotations

import email.parser
import email.policy
import re
from email.message import Message

from portal.mail.decode import decode_words

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: everything that
# str.splitlines() or a mail reader may take for the end of a line, and NUL.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ROUNDS = 8  # encoded words inside encoded words: decoded this deep, then defused

# The headers compose.py writes: at the top of the message, and on each of its parts.
TOP_LEVEL = frozenset({"from", "to", "cc", "subject", "date", "message-id", "mime-version",
                       "content-type", "content-transfer-encoding"})
PART = frozenset({"content-type", "content-transfer-encoding", "content-disposition"})


def decodings(value: str) -> list[str]:
    """The value as written and as each decoder reads it: ours (mail/decode.py, lenient,
    applied again while encoded words decode to more encoded words) and the standard
    library's header parser, the one that composes the message."""
    found = [value]
    current = value
    for _ in range(_ROUNDS):
        decoded = decode_words(current, [], "header")
        if decoded == current:
            break
        found.append(decoded)
        current = decoded
    try:
        found.append(str(email.policy.default.header_factory("Subject", value)))
    except Exception:  # a value the parser cannot read is judged by the other decodings
        pass
    return found


def control_characters(value: str | None) -> list[str]:
    """The control characters in the value or in what it decodes to, as "U+000D" names,
    in order of appearance; [] when it is safe to write into a header."""
    if not value:
        return []
    found: dict[str, None] = {}
    for text in decodings(value):
        for char in _CONTROL.findall(text):
            found[f"U+{ord(char):04X}"] = None
    return list(found)


def describe(characters: list[str]) -> str:
    """'a line break (U+000D, U+000A)' or 'a control character (U+0000)': for messages."""
    names = ", ".join(characters)
    if any(c in ("U+000D", "U+000A", "U+0085", "U+2028", "U+2029", "U+000B", "U+000C") for c in characters):
        return f"a line break ({names})"
    return f"a control character ({names})"


def clean(value: str | None) -> str:
    """The value as a reader sees it, decoded, with each run of control characters a space and
    the ends trimmed: safe to hand to the email package. For text from stored data (names)
    and file names, where refusing would stop an email the sender cannot fix."""
    text = value or ""
    for _ in range(_ROUNDS):
        decoded = decode_words(text, [], "header")
        if decoded == text:
            break
        text = decoded
    text = re.sub(f"(?:{_CONTROL.pattern})+", " ", text).strip()
    if control_characters(text):
        # Nested deeper than _ROUNDS: break the remaining encoded words so nothing decodes them.
        text = text.replace("=?", "= ?")
    return text


def unexpected_headers(composed: Message, raw: bytes) -> str | None:
    """What differs between the message as composed and its own bytes read back, or None.

    Each part, read back, must carry exactly the header names the composed part has (in
    order), all of them ones compose.py writes (TOP_LEVEL, PART), the same tree of parts
    and the same content in each leaf. A line break that reached the bytes shows up as a
    header of its own, a header cut short, or a body that starts early."""
    try:
        parsed = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
    except Exception as exc:  # any failure to read it back is a mismatch
        return f"the message does not read back ({type(exc).__name__})"
    return _compare(composed, parsed, TOP_LEVEL, "the message")


def _compare(composed: Message, parsed: Message, allowed: frozenset[str], where: str) -> str | None:
    written = [k.lower() for k in composed.keys()]
    read = [k.lower() for k in parsed.keys()]
    extra = [k for k in read if k not in allowed or k not in written]
    if extra:
        return f"{where} has a header it was not given: {extra[0]!r}"
    if read != written:
        missing = [k for k in written if k not in read]
        return f"{where} lost its {missing[0]!r} header" if missing else f"{where}'s headers changed"
    if composed.is_multipart() != parsed.is_multipart():
        return f"{where} changed its structure"
    if composed.is_multipart():
        mine, theirs = composed.get_payload(), parsed.get_payload()
        if len(mine) != len(theirs):
            return f"{where} has {len(theirs)} parts instead of {len(mine)}"
        for index, (a, b) in enumerate(zip(mine, theirs)):
            problem = _compare(a, b, PART, f"part {index + 1} of {where}")
            if problem:
                return problem
        return None
    if _content(composed) != _content(parsed):
        return f"{where}'s content changed"
    return None


def _content(part: Message) -> bytes:
    data = part.get_payload(decode=True) or b""
    return data.replace(b"\r\n", b"\n")
