"""Turn raw RFC 5322 / MIME bytes into what the CRM stores, without ever raising.

Mail in the wild breaks every rule: 8-bit headers, charsets nobody knows, base64 that does
not decode, boundaries that never appear, group syntax that upsets
``email.headerregistry``. One bad message must not stop a mailbox's sync, so every public
function here returns a best-effort result and lists what was wrong in ``defects`` (shown
to support) instead of raising.

How: ``email.parser.BytesParser`` with the lenient ``compat32`` policy keeps header values
as raw text, and we decode each piece ourselves (encoded words, 8-bit bytes, addresses,
dates), each inside its own guard, so one broken header or part costs only itself.
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from email.utils import getaddresses, parsedate_to_datetime

from portal.mail.decode import decode_bytes, decode_words, header_text

_PARSER = BytesParser(policy=compat32)

# Deeper MIME trees than this are hostile or broken; nobody nests 50 forwards.
_MAX_DEPTH = 50

# Headers that identify a message's content for de-duplication. Received, X-* and the
# like differ between the mailboxes and folders one message lands in, so they are left out.
_HASHED_HEADERS = ("date", "from", "to", "cc", "subject")

# The emails.dedupe_key column holds 500 characters; longer Message-IDs (legal up to 998)
# are hashed so that they still de-duplicate.
_MAX_KEY_LENGTH = 500

# The first empty line ends the header block (LF or CRLF endings).
_END_OF_HEADERS = re.compile(rb"(?:\A|\n)(\r?\n)")

# Last resort when getaddresses() fails on a header: anything shaped like local@domain.
_BARE_ADDRESS = re.compile(r"[^\s<>,;:\"()\[\]]+@[^\s<>,;:\"()\[\]]+")


@dataclass(frozen=True)
class Address:
    name: str  # display name, decoded ('' if none)
    address: str  # lower-cased addr-spec; never empty


@dataclass
class ParsedHeaders:
    message_id: str | None  # stripped, with <>; None if missing or empty
    subject: str  # decoded; '' if missing
    from_: list[Address]
    to: list[Address]
    cc: list[Address]
    date: datetime | None  # the Date header as naive UTC; None if missing or unparseable
    defects: list[str]  # human-readable notes of what was wrong

    def all_addresses(self) -> set[str]:
        """Every address in From, To and Cc (already lower-cased)."""
        return {a.address for a in (*self.from_, *self.to, *self.cc)}


@dataclass
class ParsedMessage(ParsedHeaders):
    text_body: str | None
    html_body: str | None  # raw HTML as in the mail; sanitised at display time
    attachments: list[dict]  # {"filename": str, "content_type": str, "size": int}


def parse_headers(raw: bytes) -> ParsedHeaders:
    """Parse the header block of ``raw`` (a header block or a whole message). Never raises."""
    defects: list[str] = []
    try:
        msg = _PARSER.parsebytes(raw, headersonly=True)
    except Exception as exc:  # noqa: BLE001 - hostile input; report instead of crashing
        defects.append(f"the headers could not be parsed ({type(exc).__name__}: {exc})")
        return ParsedHeaders(None, "", [], [], [], None, defects)
    return ParsedHeaders(**_header_fields(msg, defects), defects=_unique(defects))


_HEADER_NAMES = ("message_id", "subject", "from_", "to", "cc", "date")


def parse_message(raw: bytes, headers: ParsedHeaders | None = None) -> ParsedMessage:
    """Parse a whole message: headers, first text and HTML bodies, attachments. Never raises.

    `headers`: these header lines already parsed (the sync has them from the server's
    header extract); they are used as they are instead of being parsed again."""
    defects: list[str] = []
    try:
        msg = _PARSER.parsebytes(raw)
    except Exception as exc:  # noqa: BLE001 - e.g. RecursionError on absurd nesting
        # Keep what can be kept: the headers, and the rest as plain text.
        headers = headers or parse_headers(raw)
        defects = [
            *headers.defects,
            f"the MIME structure could not be parsed ({type(exc).__name__}); body kept as text",
        ]
        body = decode_bytes(split_header_block(raw)[1], None, defects, "body")
        return ParsedMessage(
            **{name: getattr(headers, name) for name in _HEADER_NAMES},
            defects=_unique(defects),
            text_body=body,
            html_body=None,
            attachments=[],
        )
    if headers is None:
        fields = _header_fields(msg, defects)
    else:
        fields = {name: getattr(headers, name) for name in _HEADER_NAMES}
        defects.extend(headers.defects)
    body = _Body()
    _walk(msg, body, defects, depth=0)
    return ParsedMessage(
        **fields,
        defects=_unique(defects),
        text_body=body.text,
        html_body=body.html,
        attachments=body.attachments,
    )


def content_hash(raw: bytes) -> str:
    """``sha256:<hex>`` of what stays the same wherever a message is stored.

    Used to de-duplicate messages without a Message-ID: the same message in two
    mailboxes or folders differs in Received, X-* and other trace headers, and may
    differ in line endings and header folding, so only Date, From, To, Cc and Subject
    (raw, whitespace collapsed) and the body (line endings normalised, trailing
    whitespace dropped) are hashed. Pass the whole message, not just its headers.
    """
    header_block, body = split_header_block(raw)
    unfolded = re.sub(rb"\r?\n(?=[ \t])", b"", header_block)
    picked: dict[str, list[bytes]] = {name: [] for name in _HASHED_HEADERS}
    for line in unfolded.split(b"\n"):
        name, colon, value = line.partition(b":")
        key = name.strip().lower().decode("ascii", "replace")
        if colon and key in picked:
            picked[key].append(b" ".join(value.split()))
    digest = hashlib.sha256()
    for name in _HASHED_HEADERS:
        for value in picked[name]:
            digest.update(name.encode() + b":" + value + b"\n")
    digest.update(b"\n")
    digest.update(body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").rstrip())
    return "sha256:" + digest.hexdigest()


def dedupe_key(headers: ParsedHeaders, raw: bytes) -> str:
    """The key one stored email is known by: its Message-ID lower-cased, else its content hash."""
    if not headers.message_id:
        return content_hash(raw)
    key = headers.message_id.lower()
    if len(key) > _MAX_KEY_LENGTH:
        return "sha256-mid:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return key


# --- headers ---------------------------------------------------------------------------


def _header_fields(msg: Message, defects: list[str]) -> dict:
    """The ParsedHeaders fields (but defects) of a parsed message, each header guarded alone."""
    return {
        "message_id": _guarded(defects, "Message-ID", None, _message_id, msg, defects),
        "subject": _guarded(defects, "Subject", "", _subject, msg, defects),
        "from_": _guarded(defects, "From", [], _addresses, msg, "From", defects),
        "to": _guarded(defects, "To", [], _addresses, msg, "To", defects),
        "cc": _guarded(defects, "Cc", [], _addresses, msg, "Cc", defects),
        "date": _guarded(defects, "Date", None, _date, msg, defects),
    }


def _guarded(defects: list[str], what: str, fallback, func, *args):
    """Call ``func``; on any error note a defect and return ``fallback``."""
    try:
        return func(*args)
    except Exception as exc:  # noqa: BLE001 - one broken header must not lose the others
        defects.append(f"{what}: could not be read ({type(exc).__name__}: {exc})")
        return fallback


def _raw_values(msg: Message, name: str, defects: list[str]) -> list[str]:
    """Every value of header ``name``: unfolded, 8-bit bytes decoded, encoded words not yet."""
    lowered = name.lower()
    return [
        header_text(value, defects, name)
        for key, value in msg.raw_items()
        if key.lower() == lowered
    ]


def _first_value(msg: Message, name: str, defects: list[str]) -> str | None:
    values = _raw_values(msg, name, defects)
    if len(values) > 1:
        defects.append(f"{name}: {len(values)} headers, the first one is used")
    return values[0] if values else None


def _message_id(msg: Message, defects: list[str]) -> str | None:
    value = _first_value(msg, "Message-ID", defects)
    if value is None:
        return None
    compact = re.sub(r"\s+", "", value)
    bracketed = re.search(r"<[^<>]+>", compact)
    if bracketed:
        return bracketed.group(0)
    inner = compact.strip("<>")
    return f"<{inner}>" if inner else None


def _subject(msg: Message, defects: list[str]) -> str:
    value = _first_value(msg, "Subject", defects)
    return "" if value is None else _one_line(decode_words(value, defects, "Subject"))


def _date(msg: Message, defects: list[str]) -> datetime | None:
    value = _first_value(msg, "Date", defects)
    if value is None or not value.strip():
        return None
    try:
        parsed = parsedate_to_datetime(value.strip())
        if parsed.tzinfo is not None:  # "-0000" (unknown zone) parses naive: taken as UTC
            parsed = parsed.astimezone(UTC).replace(tzinfo=None)
        return parsed
    except (TypeError, ValueError, IndexError, OverflowError):
        defects.append(f"Date: cannot parse {value.strip()!r}")
        return None


def _addresses(msg: Message, name: str, defects: list[str]) -> list[Address]:
    """The addresses of every ``name`` header, in order, each once; invalid ones are skipped."""
    found: list[Address] = []
    seen: set[str] = set()
    for value in _raw_values(msg, name, defects):
        for display, address in _split_addresses(value, name, defects):
            if address not in seen:
                seen.add(address)
                found.append(Address(name=display, address=address))
    return found


def _split_addresses(value: str, what: str, defects: list[str]) -> list[tuple[str, str]]:
    """(decoded display name, lower-cased address) pairs of one header value.

    getaddresses() runs on the raw value, so a comma inside an encoded display name
    ("=?utf-8?q?Nov=C3=A1k=2C_Jan?=") cannot split it; group syntax
    ("undisclosed-recipients:;") yields no address. Some mailers encode the whole
    "Name <addr>" as one encoded word: when the raw value gives no address, the decoded
    one is tried too.
    """
    pairs = _getaddresses(value)
    if not any(_is_address(address) for _, address in pairs) and "=?" in value:
        pairs = _getaddresses(decode_words(value, defects, what))
    result = []
    mangled = False
    for display, address in pairs:
        address = address.strip().strip("'").lower()
        if not address:
            continue
        if not _is_address(address):
            defects.append(f"{what}: skipped {address!r}, not an email address")
            mangled = mangled or "@" in address
            continue
        result.append((_one_line(decode_words(display, defects, what)), address))
    if mangled:
        # Unquoted junk ("Big Bug bb@bug.com", two addresses without a comma) defeats
        # getaddresses(); the address-shaped words are still the best guess of who it was.
        found = {address for _, address in result}
        salvaged = [a.lower() for a in _BARE_ADDRESS.findall(value) if a.lower() not in found]
        if salvaged:
            defects.append(f"{what}: malformed, took the address-shaped words {salvaged}")
            result.extend(("", address) for address in salvaged)
    return result


def _getaddresses(value: str) -> list[tuple[str, str]]:
    try:
        return getaddresses([value])
    except Exception:  # noqa: BLE001 - fall back to picking out anything address-shaped
        return [("", match) for match in _BARE_ADDRESS.findall(value)]


def _is_address(address: str) -> bool:
    local, at, domain = address.strip().rpartition("@")
    return bool(at and local and domain) and not any(ch.isspace() for ch in address.strip())


# --- body and attachments ----------------------------------------------------------------


@dataclass
class _Body:
    text: str | None = None
    html: str | None = None
    attachments: list[dict] = field(default_factory=list)


def _walk(part: Message, body: _Body, defects: list[str], depth: int) -> None:
    """Collect bodies and attachments from a MIME tree, depth first, in document order."""
    if depth > _MAX_DEPTH:
        defects.append(f"MIME parts nested deeper than {_MAX_DEPTH} levels were skipped")
        return
    ctype = "application/octet-stream"
    try:
        ctype = part.get_content_type()
        defects.extend(f"{ctype} part: {_describe(defect)}" for defect in part.defects)
        if ctype.startswith("message/"):
            # A forwarded message (or a bounce report) is shown as one attachment;
            # its own text is not this email's text.
            body.attachments.append(_message_attachment(part, ctype, defects))
        elif part.is_multipart():
            for sub in part.get_payload():
                _walk(sub, body, defects, depth + 1)
        else:
            _leaf(part, ctype, body, defects)
    except Exception as exc:  # noqa: BLE001 - one broken part must not lose the rest
        defects.append(f"{ctype} part could not be read ({type(exc).__name__}: {exc})")


def _leaf(part: Message, ctype: str, body: _Body, defects: list[str]) -> None:
    filename = filename_of(part, defects)
    disposition = part.get_content_disposition()
    inline_text = (
        ctype in ("text/plain", "text/html") and disposition != "attachment" and not filename
    )
    if ctype.startswith("multipart/"):
        # The parser could not find the boundary and left the whole part as one blob:
        # show it as text rather than lose it.
        if body.text is None:
            body.text = _text_of(part, defects, ctype)
    elif inline_text:
        if ctype == "text/plain" and body.text is None:
            body.text = _text_of(part, defects, ctype)
        elif ctype == "text/html" and body.html is None:
            body.html = _text_of(part, defects, ctype)
    else:
        payload = part.get_payload(decode=True) or b""
        body.attachments.append(
            {
                "filename": filename or _default_filename(ctype),
                "content_type": ctype,
                "size": len(payload),
            }
        )


def _text_of(part: Message, defects: list[str], ctype: str) -> str:
    """A text part's content as str, line endings normalised to "\\n"."""
    payload = part.get_payload(decode=True) or b""
    text = decode_bytes(payload, part.get_content_charset(), defects, f"{ctype} part")
    return text.replace("\r\n", "\n")


def _message_attachment(part: Message, ctype: str, defects: list[str]) -> dict:
    """An attached message/* part, sized as the enclosed message's bytes."""
    payload = part.get_payload()
    if isinstance(payload, list):
        size = sum(_wire_size(inner) for inner in payload)
    else:
        size = len(part.get_payload(decode=True) or b"")
    return {
        "filename": filename_of(part, defects) or _default_filename(ctype),
        "content_type": ctype,
        "size": size,
    }


def _wire_size(message: Message) -> int:
    """About how many bytes ``message`` had on the wire: its headers and leaf payloads.

    Counted rather than re-serialised with ``as_bytes()``, which costs a second or more
    for a forwarded message of a few MB. The parser keeps every raw byte as one character,
    so string lengths are byte counts; only the MIME boundary lines are left out.
    """
    total = 0
    for part in message.walk():
        total += sum(len(name) + len(value) + 4 for name, value in part.raw_items()) + 2
        payload = part.get_payload()
        if not isinstance(payload, list):
            total += len(payload or "")
    return total


def filename_of(part: Message, defects: list[str]) -> str | None:
    """The part's filename, decoded: RFC 2231 parameters, RFC 2047 words and raw 8-bit bytes.

    ``part.get_filename()`` alone turns raw 8-bit bytes into "?" before we can see them,
    so the Content-Disposition / Content-Type values are first decoded like any header
    and re-read through a scratch message. The name is for display only: it may hold
    path separators ("../x") and must not be used as a path.
    """
    scratch = Message()
    for key, value in part.raw_items():
        if key.lower() in ("content-disposition", "content-type"):
            scratch[key] = header_text(value, defects, f"{key} filename")
    try:
        raw = scratch.get_filename()
    except Exception as exc:  # noqa: BLE001 - malformed RFC 2231 parameters
        defects.append(f"attachment filename could not be read ({type(exc).__name__})")
        return None
    if not raw:
        return None
    return _one_line(decode_words(raw, defects, "filename")) or None


def _default_filename(ctype: str) -> str:
    if ctype in ("message/rfc822", "message/global"):
        return "message.eml"
    return "attachment" + (mimetypes.guess_extension(ctype) or "")


# --- small helpers -----------------------------------------------------------------------


def split_header_block(raw: bytes) -> tuple[bytes, bytes]:
    """(header block, body) split at the first empty line; all header if there is none."""
    match = _END_OF_HEADERS.search(raw)
    if match is None:
        return raw, b""
    return raw[: match.start(1)], raw[match.end() :]


def _describe(defect) -> str:
    """'StartBoundaryNotFoundDefect' -> 'start boundary not found' (+ the parser's note)."""
    words = re.sub(r"(?<!^)(?=[A-Z])", " ", type(defect).__name__.removesuffix("Defect")).lower()
    note = " ".join(str(defect).split())[:80]
    return f"{words} ({note})" if note and note != type(defect).__name__ else words


def _one_line(text: str) -> str:
    """Control characters (newlines, tabs, ESC) become spaces; ends trimmed. For display text."""
    return re.sub(r"[\x00-\x1f\x7f]+", " ", text).strip()


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
