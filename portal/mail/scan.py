"""The sync's cheap pre-scan of header bytes: which messages may name a customer.

Most mail involves no customer. An address-shaped scan of the header extract finds every
address the parser would (and more); one query then tells which are customers'. Only
messages naming a customer, or written oddly enough to hide one from the scan, are parsed
in full (tests/test_sync_scan.py holds the scan to the parser on every test message).
Pure: no Flask, no database.
"""
from __future__ import annotations

import binascii
import re

_ADDRESS_TOKEN = re.compile(rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\x80-\xff-]+@[A-Za-z0-9\x80-\xff-]+(?:\.[A-Za-z0-9\x80-\xff-]+)+")
# A Message-ID looks like an address but names nobody: its line (and folded continuation
# lines) is left out of the scan, which halves the addresses looked up per batch.
_MESSAGE_ID_FIELD = re.compile(rb"^message-id:[^\n]*(?:\n[ \t][^\n]*)*", re.IGNORECASE | re.MULTILINE)


def scan_addresses(header: bytes) -> tuple[set[str], bool]:
    """(everything shaped like an address in the header extract but its Message-ID, whether
    the message must be parsed in full anyway). The second is true where the scan may not
    see what the parser sees: an @ outside the tokens found (quoted local parts, dotless
    domains, obsolete route or spaced syntax), escapes, encoded words it cannot decode,
    8-bit bytes that are not UTF-8 (the parser reads them in another charset). Encoded words
    are decoded first: a mailer may write a whole "Name <address>" as one."""
    text = _MESSAGE_ID_FIELD.sub(b"", header)
    odd = False
    if b"=?" in text:
        text, odd = _decode_encoded_words(text)
    found = _ADDRESS_TOKEN.findall(text)
    unusual = odd or len(found) != text.count(b"@") or b"\\" in text
    tokens = set()
    for token in found:
        try:
            tokens.add(token.decode("utf-8").lower().strip("."))
        except UnicodeDecodeError:
            unusual = True
    return tokens, unusual


_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
# Charsets whose bytes for ASCII are ASCII: an @ or an address reads the same in them.
_ASCII_SUPERSETS = re.compile(rb"(?:us-ascii|utf-8|iso-8859-\d+|windows-125\d|cp125\d|koi8-[ru]|latin\d?)(?:\*.*)?",
                              re.IGNORECASE)


def _decode_encoded_words(text: bytes) -> tuple[bytes, bool]:
    """The header with its RFC 2047 encoded words decoded to their bytes, and whether one
    could not be (an unknown or ASCII-incompatible charset, broken base64)."""
    failed = False

    def decode(match: re.Match) -> bytes:
        nonlocal failed
        charset, kind, payload = match.groups()
        if not _ASCII_SUPERSETS.fullmatch(charset):
            failed = True
            return match.group(0)
        try:
            if kind in b"bB":
                return binascii.a2b_base64(payload + b"=" * (-len(payload) % 4))
            return binascii.a2b_qp(payload.replace(b"_", b" "), header=True)
        except (binascii.Error, ValueError):
            failed = True
            return match.group(0)

    return _ENCODED_WORD.sub(decode, text), failed
