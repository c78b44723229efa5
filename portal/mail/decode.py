"""Bytes and encoded words to text, for the parser (parse.py), never raising: RFC 2047
encoded words, charsets by their labels as mailers really use them, and a lenient fallback
for 8-bit text of unknown charset. What was wrong goes into `defects`."""
from __future__ import annotations

import base64
import binascii
import codecs
import re

# "=?charset?Q|B?text?=" (RFC 2047). Like the standard library, no whitespace is required
# around the word: broken mailers glue encoded words to plain text.
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([qQbB])\?(.*?)\?=")


def header_text(value: str, defects: list[str], what: str) -> str:
    """Unfold a raw header value and turn raw 8-bit bytes in it into characters.

    The parser keeps raw bytes as lone surrogates; RFC 6532 allows UTF-8 there, anything
    else is legacy 8-bit text of unknown charset.
    """
    value = re.sub(r"\r?\n", "", value)
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        data = value.encode("utf-8", "surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        defects.append(f"{what}: raw 8-bit bytes in no declared charset")
        return lenient(data)



def decode_words(text: str, defects: list[str], what: str) -> str:
    """Decode RFC 2047 encoded words in ``text``; a word that will not decode stays as written.

    Written here rather than with ``email.header.decode_header`` because that raises on
    one bad word and loses the whole header. Whitespace between two encoded words is
    dropped (RFC 2047 section 6.2), and adjacent words in one charset are joined before
    decoding, since mailers split multi-byte characters across words.
    """
    tokens: list[tuple[str | None, str | bytes]] = []  # (charset, bytes) or (None, literal text)
    pos = 0
    for match in _ENCODED_WORD.finditer(text):
        if match.start() > pos:
            tokens.append((None, text[pos : match.start()]))
        pos = match.end()
        charset, encoding, payload = match.groups()
        try:
            tokens.append((charset.split("*", 1)[0].lower(), _decode_word(encoding, payload)))
        except (binascii.Error, ValueError):
            defects.append(f"{what}: encoded word {match.group(0)!r} does not decode, kept as is")
            tokens.append((None, match.group(0)))
    if pos < len(text):
        tokens.append((None, text[pos:]))

    merged: list[tuple[str | None, str | bytes]] = []
    for index, (charset, value) in enumerate(tokens):
        between_words = (
            0 < index < len(tokens) - 1
            and tokens[index - 1][0] is not None
            and tokens[index + 1][0] is not None
        )
        if charset is None and between_words and not value.strip():
            continue
        if charset is not None and merged and merged[-1][0] == charset:
            merged[-1] = (charset, merged[-1][1] + value)
            continue
        merged.append((charset, value))
    return "".join(
        value if charset is None else decode_bytes(value, charset, defects, what)
        for charset, value in merged
    )


def _decode_word(encoding: str, payload: str) -> bytes:
    if encoding in "bB":
        cleaned = re.sub(r"[^A-Za-z0-9+/]", "", payload)
        if len(cleaned) % 4 == 1:  # one trailing character holds no whole byte: drop it
            cleaned = cleaned[:-1]
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4))
    return binascii.a2b_qp(payload.encode("utf-8"), header=True)


def decode_bytes(data: bytes, charset: str | None, defects: list[str], what: str) -> str:
    """Bytes to text: the declared charset, else UTF-8, else a lenient fallback. Never raises.

    Order and why: the declared charset (widened to the superset mailers really use)
    when Python knows it; then strict UTF-8, the usual truth behind a missing, unknown or
    wrong label (skipped for pure ASCII, where it proves nothing); then the declared
    charset with replacement characters, right for a few bad bytes in, say, ISO-2022-JP;
    last ``lenient``.
    """
    codec = _codec_for(charset, defects, what) if charset else None
    if codec:
        try:
            return data.decode(codec)
        except (UnicodeError, ValueError, TypeError):
            defects.append(f"{what}: bytes not valid in the declared charset {charset!r}")
    if not data.isascii():
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    if codec and codec not in ("ascii", "utf-8"):
        try:
            return data.decode(codec, "replace")
        except (UnicodeError, ValueError, TypeError):
            pass
    return lenient(data)


# Labels to the superset that mailers actually write under them, as browsers decode them
# (WHATWG Encoding Standard): "iso-8859-1" mail is full of Windows-1252 quotes, "gb2312"
# of GBK characters, and so on. Keys are Python's canonical codec names.
_SUPERSETS = {
    "iso8859-1": "cp1252",
    "iso8859-9": "cp1254",
    "tis-620": "cp874",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "big5": "big5hkscs",
    "shift_jis": "cp932",
    "euc_kr": "cp949",
}


def _codec_for(charset: str, defects: list[str], what: str) -> str | None:
    """Python's codec for a MIME charset label, or None (noted) when it has none.

    Tolerates the common non-standard spellings: "x-mac-cyrillic" (x- prefix) and
    "iso-8859-8-i" (the -i/-e suffixes of RFC 1556 only describe text direction).
    """
    label = charset.strip().strip("\"'").lower()
    candidates = [label, label.removeprefix("x-"), re.sub(r"-[ie]$", "", label)]
    for candidate in candidates:
        try:
            name = codecs.lookup(candidate).name
        except LookupError:
            continue
        return _SUPERSETS.get(name, name)
    defects.append(f"{what}: unknown charset {label!r}")
    return None


def lenient(data: bytes) -> str:
    """Decode bytes of unknown charset: UTF-8 if they mostly are, else Windows-1252/Latin-1.

    A few bad bytes in otherwise valid UTF-8 become replacement characters; text with
    no valid UTF-8 at all is legacy 8-bit mail, which Windows-1252 (or Latin-1, which
    maps every byte) keeps readable instead of turning it into a row of "?".
    """
    text = data.decode("utf-8", "replace")
    bad = text.count("\ufffd")
    good = sum(1 for ch in text if ord(ch) > 127) - bad
    if good > bad:
        return text
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")
