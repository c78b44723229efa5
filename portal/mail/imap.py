"""Talking IMAP: one connection per job, every socket with a time-out, every command counted.

Thin on purpose: it speaks the protocol and hands back plain data; sync.py decides.
"""
from __future__ import annotations

import imaplib
import re
import socket
import ssl
import types
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from imapclient import IMAPClient, imap4, tls
from imapclient.exceptions import LoginError
from imapclient.imapclient import SocketTimeout, seq_to_parenstr_upper
from imapclient.response_parser import parse_fetch_response

from portal.mail.hosts import HostPolicy, Target
from portal.mail.xoauth2 import Xoauth2

SKIP_SPECIAL_USE = {"\\Drafts", "\\Junk", "\\Trash"}
SPECIAL_USE = {"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash"}
# Servers without SPECIAL-USE: the names clients commonly give these folders.
SKIP_NAMES = {
    "drafts": "\\Drafts", "draft": "\\Drafts", "concepts": "\\Drafts", "koncepty": "\\Drafts",
    "junk": "\\Junk", "junk e-mail": "\\Junk", "junk email": "\\Junk", "spam": "\\Junk", "nevyžádaná pošta": "\\Junk",
    "trash": "\\Trash", "deleted items": "\\Trash", "deleted messages": "\\Trash", "bin": "\\Trash", "koš": "\\Trash",
}
HEADER_FIELDS = b"BODY.PEEK[HEADER.FIELDS (MESSAGE-ID FROM TO CC DATE SUBJECT)]"


@dataclass(frozen=True)
class Folder:
    name: str
    flags: frozenset[str]
    special_use: str | None

    @property
    def selectable(self) -> bool:
        return not ({"\\Noselect", "\\NonExistent"} & self.flags)


@dataclass(frozen=True)
class FolderStatus:
    uidvalidity: int
    uidnext: int
    messages: int
    highestmodseq: int | None


@dataclass(frozen=True)
class HeaderRecord:
    uid: int
    flags: frozenset[str]
    internal_date: datetime  # naive UTC
    size: int
    header: bytes


class NotImapServer(imaplib.IMAP4.error):
    """Something answered, but not as an IMAP server: said in words, never with its bytes
    (they may be another service's banner on the internal network)."""

    def __init__(self, host: str, port: int):
        super().__init__(f"The server at {host}:{port} did not answer as an IMAP server.")


# An IMAP greeting (RFC 9051 7.1): "* OK", "* PREAUTH" or "* BYE", in any case.
_GREETINGS = (b"* OK", b"* PREAUTH", b"* BYE")
_GREETING = re.compile(rb"\* (?:OK|PREAUTH|BYE)\b", re.IGNORECASE)


class _Connect:
    """imaplib's connection, opened to the checked address (hosts.Target) while `host` stays
    the name, for TLS (SNI and the certificate check, STARTTLS's too); the greeting is looked
    at before imaplib reads it, so another service's banner fails at once and unechoed."""

    _target: Target | None
    _timeout: float | None

    def _tcp(self, timeout: float | None) -> socket.socket:
        timeout = timeout if timeout is not None else self._timeout
        if self._target is None:
            return socket.create_connection((self.host, self.port), timeout)
        return self._target.connect(timeout)

    def _connect(self) -> None:
        head = self.file.peek(len(_GREETINGS[1]))[:len(_GREETINGS[1])]
        if head and not any(g[:len(head)] == head.upper()[:len(g)] for g in _GREETINGS):
            raise NotImapServer(self.host, self.port)
        try:
            super()._connect()
        except imaplib.IMAP4.abort as exc:
            if str(exc).startswith("unexpected response"):  # imaplib would show the bytes
                raise NotImapServer(self.host, self.port) from None
            raise
        except imaplib.IMAP4.error:
            if not _GREETING.match(getattr(self, "welcome", None) or b""):
                raise NotImapServer(self.host, self.port) from None
            raise  # "* BYE [UNAVAILABLE] ...": the server's own words


class _Imap4(_Connect, imap4.IMAP4WithTimeout):
    def __init__(self, host: str, port: int, timeout: float | None, target: Target | None):
        self._target = target
        super().__init__(host, port, timeout)

    def _create_socket(self, timeout=None):
        return self._tcp(timeout)


class _Imap4Tls(_Connect, tls.IMAP4_TLS):
    def __init__(self, host: str, port: int, context: ssl.SSLContext | None, timeout: float | None,
                 target: Target | None):
        self._target = target
        super().__init__(host, port, context, timeout)

    def _create_socket(self, timeout=None):
        return tls.wrap_socket(self._tcp(timeout), self.ssl_context, self.host)


class _Client(IMAPClient):
    """IMAPClient on _Imap4 / _Imap4Tls (it builds its imaplib object in _create_IMAP4)."""

    def __init__(self, host: str, target: Target | None, **kwargs):
        self._target = target
        super().__init__(host, **kwargs)

    def _create_IMAP4(self):
        connect_timeout = getattr(self._timeout, "connect", None)
        if self.ssl:
            return _Imap4Tls(self.host, self.port, self.ssl_context, connect_timeout, self._target)
        return _Imap4(self.host, self.port, connect_timeout, self._target)


class ImapSession:
    """A connected, logged-in IMAP session. Use as a context manager.

    With `hosts` (the product always passes one: accounts/sessions.py) the host is resolved
    and checked once and the connection goes to the checked address (HostRefused if it is
    internal and not allowed); without it, it is connected by name (tests, tools)."""

    def __init__(self, host: str, port: int, security: str, *, timeout: float = 60,
                 ca_file: str | None = None, hosts: HostPolicy | None = None):
        self.host, self.port, self.security = host, port, security
        self.commands = 0
        target = hosts.check(host, port) if hosts is not None else None
        context = ssl.create_default_context(cafile=ca_file) if security in ("ssl", "starttls") else None
        self.client = _Client(host, target, port=port, ssl=security == "ssl", ssl_context=context,
                              timeout=SocketTimeout(connect=min(timeout, 20), read=timeout))
        self.client.normalise_times = False  # keep INTERNALDATE's zone; we convert to UTC
        self._count_commands()
        if security == "starttls":
            self.client.starttls(context)

    def _count_commands(self) -> None:
        imap = self.client._imap
        original = imap._command

        def counted(_imap, name, *args):
            self.commands += 1
            return original(name, *args)

        # A bound method, not a plain function: imaplib tells an AUTHENTICATE callback from a
        # literal by `type(literal) is type(self._command)`.
        imap._command = types.MethodType(counted, imap)

    def __enter__(self) -> "ImapSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.client.logout()
        except Exception:  # the connection may already be gone; nothing left to do
            try:
                self.client.shutdown()
            except Exception:
                pass

    # -- authentication -----------------------------------------------------------------
    def login_password(self, login: str, password: str) -> None:
        self.client.login(login, password)

    def login_xoauth2(self, user: str, access_token: str) -> None:
        """AUTHENTICATE XOAUTH2 through sasl_login; a refusal keeps the server's JSON error
        in the exception's words (see xoauth2.py)."""
        exchange = Xoauth2(user, access_token)
        try:
            self.client.sasl_login("XOAUTH2", lambda challenge: exchange.answer(challenge).encode())
        except LoginError as exc:
            if exchange.error:
                raise LoginError(f"{exc} {exchange.error}") from None
            raise

    # -- folders --------------------------------------------------------------------------
    def capabilities(self) -> set[str]:
        return {c.decode() if isinstance(c, bytes) else c for c in self.client.capabilities()}

    def list_folders(self) -> list[Folder]:
        folders = []
        for flags, _sep, name in self.client.list_folders():
            flag_set = frozenset(f.decode() if isinstance(f, bytes) else str(f) for f in flags)
            special = next((f for f in flag_set if f in SPECIAL_USE), None)
            if special is None and name.lower() in SKIP_NAMES:
                special = SKIP_NAMES[name.lower()]
            folders.append(Folder(name=name, flags=flag_set, special_use=special))
        return folders

    def status(self, folder: str, condstore: bool) -> FolderStatus:
        what = [b"UIDNEXT", b"UIDVALIDITY", b"MESSAGES"] + ([b"HIGHESTMODSEQ"] if condstore else [])
        data = self.client.folder_status(folder, what)
        return FolderStatus(
            uidvalidity=int(data[b"UIDVALIDITY"]), uidnext=int(data[b"UIDNEXT"]),
            messages=int(data[b"MESSAGES"]),
            highestmodseq=int(data[b"HIGHESTMODSEQ"]) if b"HIGHESTMODSEQ" in data else None,
        )

    def select(self, folder: str) -> None:
        self.client.select_folder(folder, readonly=True)

    def append(self, folder: str, raw: bytes, *, flags: tuple[str, ...] = (), when: datetime | None = None,
               create: bool = False) -> None:
        """APPEND a message (creating the folder first when asked and it is missing)."""
        if create and not self.client.folder_exists(folder):
            self.client.create_folder(folder)
        self.client.append(folder, raw, flags=[f.encode() for f in flags], msg_time=when)

    # -- messages -------------------------------------------------------------------------
    def uids_since(self, day: date, below_uid: int | None = None) -> list[int]:
        criteria: list = ["SINCE", day]
        if below_uid is not None:
            if below_uid <= 1:
                return []
            criteria += ["UID", f"1:{below_uid - 1}"]
        return sorted(int(u) for u in self.client.search(criteria))

    def newest_uids(self, messages: int, count: int) -> list[int]:
        """The UIDs of the selected folder's newest `count` of its `messages`, however sparse
        the UIDs are (a sequence set in SEARCH)."""
        first = max(1, messages - count + 1)
        return sorted(int(u) for u in self.client.search([f"{first}:*"]))[-count:]

    def uids_above(self, last_uid: int) -> list[int]:
        # `n:*` always returns the newest message even when its UID is below n: drop those.
        found = self.client.search(["UID", f"{last_uid + 1}:*"])
        return sorted(int(u) for u in found if int(u) > last_uid)

    def _fetch_raw(self, uids: list[int], items: list[bytes]) -> list:
        """UID FETCH with the UIDs as a compact UID set (uid_set); imaplib's untagged FETCH
        data, not parsed yet. IMAPClient.fetch would join a thousand UIDs with commas (some
        7 KB of command line) and cannot take a set with ranges."""
        imap = self.client._imap
        tag = imap._command("UID", "FETCH", uid_set(uids), seq_to_parenstr_upper(items))
        typ, data = imap._command_complete("FETCH", tag)
        self.client._checkok("fetch", typ, data)
        typ, data = imap._untagged_response(typ, data, "FETCH")
        return [item for item in data if item is not None]

    def fetch_headers(self, uids: list[int]) -> list[HeaderRecord]:
        if not uids:
            return []
        data = self._fetch_raw(uids, [b"UID", b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", HEADER_FIELDS])
        try:
            records = header_records_fast(data, set(uids))
        except Unrecognised:
            records = header_records(data, set(uids))
        return sorted(records, key=lambda r: r.uid)

    def fetch_bodies(self, uids: list[int]) -> dict[int, bytes]:
        if not uids:
            return {}
        response = _parsed(self._fetch_raw(uids, [b"BODY.PEEK[]"]), set(uids))
        return {int(uid): item.get(b"BODY[]", b"") or b"" for uid, item in response.items()}


def _parsed(data: list, wanted: set[int]) -> dict[int, dict]:
    """imaplib's FETCH data read by IMAPClient's parser, which reads any answer a server may
    give; unsolicited responses about other messages are dropped, as IMAPClient.fetch does."""
    return {uid: item for uid, item in parse_fetch_response(data, False, True).items() if uid in wanted}


# -- the header FETCH's answer, read two ways -----------------------------------------------
def header_records(data: list, wanted: set[int]) -> list[HeaderRecord]:
    """By IMAPClient's parser (_parsed)."""
    records = []
    for uid, item in _parsed(data, wanted).items():
        header = next((v for k, v in item.items() if k.startswith(b"BODY[HEADER")), b"") or b""
        records.append(HeaderRecord(
            uid=int(uid),
            flags=frozenset(f.decode() if isinstance(f, bytes) else str(f) for f in item.get(b"FLAGS", ())),
            internal_date=_utc(item.get(b"INTERNALDATE")),
            size=int(item.get(b"RFC822.SIZE", 0)),
            header=header,
        ))
    return records


class Unrecognised(ValueError):
    """The answer is not in the one shape header_records_fast reads."""


# `* 12 FETCH (UID 345 FLAGS (\Seen) INTERNALDATE "27-Nov-2026 10:00:00 +0100" RFC822.SIZE 2048
# BODY[HEADER.FIELDS (MESSAGE-ID FROM TO CC DATE SUBJECT)] {234}`, the literal, then `)`; imaplib
# hands the part before the literal and the literal as a pair, the rest as the next item.
_FETCH_START = re.compile(rb"\d+ \((.*)\Z", re.DOTALL)
_FETCH_ITEM = re.compile(
    rb' ?(?:UID (?P<uid>\d+)|FLAGS \((?P<flags>[^()"{}]*)\)|INTERNALDATE "(?P<date>[^"]*)"'
    rb'|RFC822\.SIZE (?P<size>\d+)|MODSEQ \(\d+\)|(?P<header>BODY\[HEADER\.FIELDS \([^()]*\)\] \{\d+\}\Z))')
_USUAL_ORDER = re.compile(
    rb'\d+ \(UID (\d+) FLAGS \(([^()"{}]*)\) INTERNALDATE "([^"]*)" RFC822\.SIZE (\d+) '
    rb'BODY\[HEADER\.FIELDS \([^()]*\)\] \{\d+\}\Z')
_INTERNALDATE = re.compile(rb" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)\Z")
_MONTHS = {m: i for i, m in enumerate(
    (b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec"), 1)}


def header_records_fast(data: list, wanted: set[int]) -> list[HeaderRecord]:
    """The same records as header_records, read with a few regular expressions.

    IMAPClient's parser lexes every byte of the answer in Python: in a back-fill it was
    two thirds of the sync's whole time, more than storing and deciding on the mail
    (bench/sync.py). The answer to our own header FETCH has one shape, read here in one
    pass; anything else in it (a quoted or NIL section, an unknown item, an odd date)
    raises Unrecognised and the caller lets IMAPClient's parser read the whole answer.
    tests/test_imap_fetch.py holds the two readers equal on real Dovecot answers."""
    records = []
    i, n = 0, len(data)
    while i < n:
        item = data[i]
        if isinstance(item, bytes) and b"BODY[" not in item and _FETCH_START.match(item):
            i += 1  # an unsolicited answer without a section (another client set a flag): not ours
            continue
        if not isinstance(item, tuple) or i + 1 >= n or not isinstance(data[i + 1], bytes):
            raise Unrecognised(repr(item)[:200])
        (prefix, header), rest = item, data[i + 1]
        i += 2
        usual = _USUAL_ORDER.match(prefix) if rest == b")" else None
        if usual is not None:  # the items in the order asked for, nothing else: one match
            fields = dict(zip(("uid", "flags", "date", "size"), usual.groups()))
        else:
            start = _FETCH_START.match(prefix)
            if start is None or not rest.endswith(b")"):
                raise Unrecognised(repr(prefix)[:200])
            fields = _read_items(start.group(1), rest[:-1])
        uid = fields.get("uid")
        if uid is None:
            raise Unrecognised(repr(prefix)[:200])
        uid = int(uid)
        if uid not in wanted:
            continue  # an unsolicited answer about another message
        try:
            flags = frozenset(fields.get("flags", b"").decode("ascii").split())
        except UnicodeDecodeError:
            raise Unrecognised("FLAGS not in ASCII") from None
        records.append(HeaderRecord(
            uid=uid,
            flags=flags,
            internal_date=_internaldate(fields["date"]) if "date" in fields else _utc(None),
            size=int(fields.get("size") or 0),
            header=header,
        ))
    return records


def _read_items(before_literal: bytes, after_literal: bytes) -> dict[str, bytes]:
    fields: dict[str, bytes] = {}
    for text, needs_header in ((before_literal, True), (after_literal, False)):
        pos, end, header_seen = 0, len(text), False
        while pos < end:
            match = _FETCH_ITEM.match(text, pos)
            if match is None or match.end() == pos:
                raise Unrecognised(repr(text[pos:pos + 80]))
            if match.group("header"):
                header_seen = True
            for name in ("uid", "flags", "date", "size"):
                value = match.group(name)
                if value is not None:
                    fields[name] = value
            pos = match.end()
        if needs_header and not header_seen:
            raise Unrecognised("the header section is not the literal")
    return fields


def _internaldate(value: bytes) -> datetime:
    match = _INTERNALDATE.match(value)
    month = _MONTHS.get(match.group(2).lower()) if match else None
    if month is None:
        raise Unrecognised(f"INTERNALDATE {value!r}")
    day, _, year, hour, minute, second, sign, zone_h, zone_m = match.groups()
    offset = timedelta(hours=int(zone_h), minutes=int(zone_m))
    local = datetime(int(year), month, int(day), int(hour), int(minute), int(second))
    return local - offset if sign == b"+" else local + offset


def uid_set(uids: list[int]) -> str:
    """A UID set with runs written as ranges: "4,7:9,12" for [4, 7, 8, 9, 12].

    A batch's UIDs are mostly consecutive, so a thousand of them make a few bytes instead of
    some 7 KB: servers limit command lines (RFC 7162 asks clients to stay under 8,192 octets).
    A range is safe here because every UID in it was listed."""
    ordered = sorted(set(uids))
    parts: list[str] = []
    start = prev = None
    for uid in ordered:
        if prev is not None and uid == prev + 1:
            prev = uid
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = uid
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(parts)


def _utc(value) -> datetime:
    if not isinstance(value, datetime):
        return datetime.now(timezone.utc).replace(tzinfo=None)
    if value.tzinfo is None:
        return value
    return value.astimezone(timezone.utc).replace(tzinfo=None)
