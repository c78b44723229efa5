"""The header FETCH's answer, read by IMAPClient's parser and by the product's fast reader.

The fast reader (portal.mail.imap.header_records_fast) must give exactly what IMAPClient's
parser gives, on real Dovecot answers and on shapes other servers send; whatever it does
not know it must refuse (Unrecognised), and fetch_headers then falls back."""
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from devservers import make_message
from portal.mail import imap
from portal.mail.imap import ImapSession, Unrecognised, header_records, header_records_fast
from tests import corpus


def _session(dovecot, address: str) -> ImapSession:
    session = ImapSession(dovecot.host, dovecot.imap_port, "none", timeout=10)
    session.login_password(address, dovecot.users[address])
    return session


def test_both_readers_agree_on_dovecots_answers_and_the_fast_one_needs_no_fallback(dovecot):
    address = f"fetch-{uuid.uuid4().hex[:8]}@agency.test"
    dovecot.add_user(address, "imap-pass-1")
    zones = [timezone.utc, timezone(timedelta(hours=1)), timezone(timedelta(hours=-5, minutes=-30)),
             timezone(timedelta(hours=13, minutes=45))]
    flag_sets = [(), ("\\Seen",), ("\\Seen", "\\Answered", "\\Flagged"), ("$Forwarded", "NonJunk"), ("\\Draft",)]
    for i in range(40):  # day 1..9 too: INTERNALDATE pads those with a space
        when = datetime(2026, 1 + i % 12, 1 + i % 28, i % 24, i % 60, i % 60, tzinfo=zones[i % len(zones)])
        dovecot.append(address, "INBOX", make_message(
            from_=(f"Jiří Novák {i}", f"jiri{i}@klient.test"), to=address, cc=[f"petra{i}@klient.test"],
            subject=f"Nabídka ({i}) {{x}} \"q\"", body="Dobrý den", message_id=f"<f{i}@klient.test>", date=when),
            flags=flag_sets[i % len(flag_sets)], when=when)
    files = corpus.message_files()  # our own hostile mail, and the external corpus when present
    for path in files:  # headers in every shape: 8-bit, folded, parentheses, braces
        dovecot.append(address, "INBOX", path.read_bytes(), flags=("\\Seen",))
    session = _session(dovecot, address)
    try:
        session.select("INBOX")
        uids = sorted(session.client.search(["ALL"]))
        assert len(uids) == 40 + len(files)
        data = session._fetch_raw(uids, [b"UID", b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", imap.HEADER_FIELDS])
        slow = sorted(header_records(data, set(uids)), key=lambda r: r.uid)
        fast = sorted(header_records_fast(data, set(uids)), key=lambda r: r.uid)  # raises if it would fall back
        assert fast == slow
        assert len(fast) == len(uids) and all(r.header for r in fast)
        assert {r.flags - {"\\Recent"} for r in fast} >= {
            frozenset(), frozenset({"\\Seen", "\\Answered", "\\Flagged"}), frozenset({"$Forwarded", "NonJunk"})}
        first = fast[0]
        assert first.internal_date == datetime(2026, 1, 1, 0, 0, 0)  # naive UTC
        assert fast[2].internal_date == datetime(2026, 3, 3, 2, 2, 2) + timedelta(hours=5, minutes=30)
        assert session.fetch_headers(uids) == slow  # what the sync gets
    finally:
        session.close()


PREFIX = b'7 (UID 42 FLAGS (\\Seen) INTERNALDATE " 3-Nov-2026 10:20:30 +0100" RFC822.SIZE 2048 ' \
         b'BODY[HEADER.FIELDS (MESSAGE-ID FROM TO CC DATE SUBJECT)] {20}'
HEADER = b"From: a@klient.test\r\n"[:20]


@pytest.mark.parametrize("data", [
    pytest.param([(PREFIX, HEADER), b")"], id="usual"),
    pytest.param([(b'7 (FLAGS (\\Seen $Label1) BODY[HEADER.FIELDS (MESSAGE-ID FROM TO CC DATE SUBJECT)] {20}', HEADER),
                  b' UID 42 RFC822.SIZE 2048 INTERNALDATE "03-Nov-2026 10:20:30 -0000")'], id="items after the literal"),
    pytest.param([(PREFIX.replace(b"RFC822.SIZE 2048", b"MODSEQ (12345) RFC822.SIZE 2048"), HEADER), b")"], id="modseq"),
    pytest.param([(PREFIX, HEADER), b")", b"9 (FLAGS (\\Deleted))", (PREFIX.replace(b"UID 42", b"UID 43"), HEADER), b")"],
                 id="unsolicited for other messages"),
    pytest.param([(PREFIX.replace(b"(\\Seen)", b"()"), HEADER), b")"], id="no flags"),
])
def test_other_orders_and_unsolicited_answers_read_the_same(data):
    wanted = {42}
    fast = header_records_fast(data, wanted)
    assert fast == header_records(data, wanted) and [r.uid for r in fast] == [42]
    assert fast[0].header == HEADER and fast[0].size == 2048


@pytest.mark.parametrize("data", [
    pytest.param([b'7 (UID 42 FLAGS () INTERNALDATE "03-Nov-2026 10:20:30 +0000" RFC822.SIZE 5 '
                  b'BODY[HEADER.FIELDS (MESSAGE-ID FROM TO CC DATE SUBJECT)] NIL)'], id="NIL section"),
    pytest.param([b'7 (UID 42 FLAGS () INTERNALDATE "03-Nov-2026 10:20:30 +0000" RFC822.SIZE 5 '
                  b'BODY[HEADER.FIELDS (MESSAGE-ID FROM TO CC DATE SUBJECT)] "Subject: x\r\n")'], id="quoted section"),
    pytest.param([(PREFIX.replace(b"+0100", b"+01:00"), HEADER), b")"], id="odd date"),
    pytest.param([(PREFIX.replace(b"RFC822.SIZE 2048", b"X-GM-THRID 1234"), HEADER), b")"], id="unknown item"),
    pytest.param([(PREFIX.replace(b"UID 42 ", b""), HEADER), b")"], id="no UID"),
])
def test_what_the_fast_reader_does_not_know_is_refused_not_guessed(data):
    with pytest.raises(Unrecognised):
        header_records_fast(data, {42})


def test_fetch_headers_falls_back_to_imapclients_parser(dovecot, monkeypatch):
    address = f"fallback-{uuid.uuid4().hex[:8]}@agency.test"
    dovecot.add_user(address, "imap-pass-1")
    dovecot.append(address, "INBOX", make_message(from_="a@klient.test", to=address, subject="x", body="y"))

    def refuse(data, wanted):
        raise Unrecognised("as for an answer in a shape it does not know")

    session = _session(dovecot, address)
    try:
        session.select("INBOX")
        expected = session.fetch_headers([1])
        monkeypatch.setattr(imap, "header_records_fast", refuse)
        assert session.fetch_headers([1]) == expected and expected[0].header.startswith(b"From: a@klient.test")
    finally:
        session.close()
