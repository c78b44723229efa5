"""Tests of devservers (the real servers that tests, the demo and the bench start).

No conftest fixtures: run with `pytest tests/test_servers.py --noconftest`.  A missing
dovecot or redis-server makes these fail, never skip.
"""

from __future__ import annotations

import email
import email.policy
import http.server
import json
import os
import smtplib
import socket
import ssl
import threading
import time
import urllib.parse
from datetime import datetime, timedelta, timezone
from pathlib import Path

import imapclient
import pytest
from imapclient.exceptions import LoginError

from devservers import Dovecot, RedisServer, ServerStartError, SmtpSink, free_port, make_message
from devservers.process import _find_binary

ALICE = "alice@example.test"


@pytest.fixture(scope="module")
def dovecot():
    server = Dovecot()
    server.start()
    server.add_user(ALICE, "alicepw")
    yield server
    server.close()


def _user(dovecot: Dovecot, name: str, password: str = "pw") -> str:
    address = f"{name}@example.test"
    dovecot.add_user(address, password)
    return address


def _utc(dt: datetime) -> datetime:
    # imapclient hands back INTERNALDATE as naive local time
    return dt.astimezone(timezone.utc)


def _msg(i: int = 0, **kw) -> bytes:
    kw.setdefault("from_", "Jiří Novák <jiri@example.test>")
    kw.setdefault("to", ALICE)
    kw.setdefault("subject", f"Message {i}")
    return make_message(**kw)


# ---- Dovecot ---------------------------------------------------------------------------


def test_dovecot_starts_quickly_and_login_works(dovecot):
    assert dovecot.start_seconds < 3
    c = dovecot.client(ALICE)
    try:
        caps = c.capabilities()
        for cap in (b"UIDPLUS", b"CONDSTORE", b"QRESYNC", b"SPECIAL-USE", b"MULTIAPPEND", b"MOVE"):
            assert cap in caps
    finally:
        c.logout()


def test_wrong_password_fails_quickly_with_authenticationfailed(dovecot):
    t0 = time.monotonic()
    with pytest.raises(LoginError, match="AUTHENTICATIONFAILED"):
        dovecot.client(ALICE, "not-the-password")
    assert time.monotonic() - t0 < 3


def test_special_use_folders_are_listed(dovecot):
    address = _user(dovecot, "folders")
    dovecot.create_folder(address, "Archive", special_use="\\Archive")
    dovecot.create_folder(address, "Projects/Acme")
    c = dovecot.client(address)
    try:
        listed = {name: set(flags) for flags, _sep, name in c.list_folders()}
        assert c.find_special_folder(b"\\Sent") == "Sent"
    finally:
        c.logout()
    assert b"\\Drafts" in listed["Drafts"]
    assert b"\\Sent" in listed["Sent"]
    assert b"\\Junk" in listed["Junk"]
    assert b"\\Trash" in listed["Trash"]
    assert b"\\Archive" in listed["Archive"]
    assert "Projects/Acme" in listed
    # Maildir++ on disk: hierarchy separator '.', leading dot
    assert (dovecot.home(address) / "Maildir" / ".Projects.Acme" / "cur").is_dir()
    maildir = dovecot.home(address) / "Maildir"
    assert dovecot.maildir_path(address, "Projects/Acme") == maildir / ".Projects.Acme"


def test_append_keeps_internaldate_and_draft_flag(dovecot):
    address = _user(dovecot, "appender")
    when = datetime(2024, 3, 5, 14, 30, 0, tzinfo=timezone.utc)
    uid = dovecot.append(address, "Drafts", _msg(subject="Návrh"), flags=["\\Draft"], when=when)
    assert isinstance(uid, int)
    c = dovecot.client(address)
    try:
        c.select_folder("Drafts", readonly=True)
        data = c.fetch([uid], ["FLAGS", "INTERNALDATE", "ENVELOPE"])[uid]
    finally:
        c.logout()
    assert b"\\Draft" in data[b"FLAGS"]
    assert _utc(data[b"INTERNALDATE"]) == when
    assert data[b"ENVELOPE"].from_[0].mailbox == b"jiri"


def test_multiappend_returns_uids_in_order(dovecot):
    address = _user(dovecot, "multi")
    base = datetime(2023, 6, 1, tzinfo=timezone.utc)
    messages = [(_msg(i), ("\\Seen",) if i % 2 else (), base + timedelta(days=i)) for i in range(5)]
    uids = dovecot.multiappend(address, "INBOX", messages, batch_size=2)
    assert uids == [1, 2, 3, 4, 5]
    c = dovecot.client(address)
    try:
        c.select_folder("INBOX", readonly=True)
        got = c.fetch(uids, ["FLAGS", "INTERNALDATE"])
    finally:
        c.logout()
    assert [_utc(got[u][b"INTERNALDATE"]) for u in uids] == [m[2] for m in messages]
    assert [b"\\Seen" in got[u][b"FLAGS"] for u in uids] == [bool(i % 2) for i in range(5)]


def test_write_maildir_2000_messages_visible_with_internaldates_and_flags(dovecot):
    address = _user(dovecot, "bulk")
    base = datetime(2022, 1, 1, tzinfo=timezone.utc)
    letters = ["", "S", "DS", "FR", "T"]
    template = _msg(subject="Message NNNNN")  # make_message takes ~1 ms; vary one template
    messages = [
        # dates out of order on purpose: UIDs must follow the list, not the dates
        (template.replace(b"NNNNN", str(i).encode()), letters[i % 5],
         base + timedelta(hours=(i * 7919) % 20000))
        for i in range(2000)
    ]
    c = dovecot.client(address)
    try:
        c.select_folder("INBOX")  # written while a session has the folder open
        t0 = time.monotonic()
        dovecot.write_maildir(address, "INBOX", messages)
        dovecot.write_maildir(address, "Old/Archive 2019", messages[:3])
        elapsed = time.monotonic() - t0
        c.noop()
        uids = c.search("ALL")
        got = c.fetch(uids, ["FLAGS", "INTERNALDATE", "RFC822.SIZE",
                             "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
    finally:
        c.logout()
    print(f"write_maildir 2000 messages: {elapsed:.2f} s")
    assert elapsed < 10  # 0.4 s on an idle disk; generous for a busy CI machine
    assert uids == list(range(1, 2001))
    flag_of = {"D": b"\\Draft", "F": b"\\Flagged", "R": b"\\Answered", "S": b"\\Seen",
               "T": b"\\Deleted"}
    for i, uid in enumerate(uids):
        data, letter_str, when = messages[i]
        item = got[uid]
        assert item[b"BODY[HEADER.FIELDS (SUBJECT)]"].strip() == f"Subject: Message {i}".encode()
        assert _utc(item[b"INTERNALDATE"]) == when
        assert item[b"RFC822.SIZE"] == len(data)
        assert set(item[b"FLAGS"]) - {b"\\Recent"} == {flag_of[x] for x in letter_str}
    status = dovecot.folder_status(address, "Old/Archive 2019")
    assert status["MESSAGES"] == 3
    assert (dovecot.home(address) / "Maildir" / ".Old.Archive 2019" / "maildirfolder").exists()


def test_set_password_makes_old_password_fail(dovecot):
    address = _user(dovecot, "rotating", "first")
    dovecot.client(address).logout()
    dovecot.set_password(address, "second")
    with pytest.raises(LoginError, match="AUTHENTICATIONFAILED"):
        dovecot.client(address, "first")
    dovecot.client(address).logout()  # the stored (new) password works
    dovecot.remove_user(address)
    with pytest.raises(LoginError, match="AUTHENTICATIONFAILED"):
        dovecot.client(address, "second")


def test_set_uidvalidity_changes_uidvalidity(dovecot):
    address = _user(dovecot, "validity")
    dovecot.append(address, "INBOX", _msg())
    before = dovecot.folder_status(address, "INBOX")
    after = dovecot.set_uidvalidity(address, "INBOX", before["UIDVALIDITY"] + 1000)
    assert after == before["UIDVALIDITY"] + 1000
    assert dovecot.folder_status(address, "INBOX")["MESSAGES"] == 1  # doveadm keeps mail

    dovecot.create_folder(address, "Clients")
    dovecot.append(address, "Clients", _msg())
    old = dovecot.folder_status(address, "Clients")["UIDVALIDITY"]
    new = dovecot.set_uidvalidity(address, "Clients", recreate=True)
    assert new != old
    assert dovecot.folder_status(address, "Clients")["MESSAGES"] == 0


def test_expunge_and_delete_folder(dovecot):
    address = _user(dovecot, "expunger")
    dovecot.create_folder(address, "Tmp")
    uids = [dovecot.append(address, "Tmp", _msg(i)) for i in range(3)]
    dovecot.expunge(address, "Tmp", uids[:2])
    status = dovecot.folder_status(address, "Tmp")
    assert status["MESSAGES"] == 1 and status["UIDNEXT"] == 4
    dovecot.delete_folder(address, "Tmp")
    c = dovecot.client(address)
    try:
        assert not c.folder_exists("Tmp")
    finally:
        c.logout()


def test_imaps_and_starttls_verify_against_cert_path(dovecot):
    ctx = ssl.create_default_context(cafile=str(dovecot.cert_path))
    c = imapclient.IMAPClient(dovecot.host, port=dovecot.imaps_port, ssl=True, ssl_context=ctx,
                              timeout=5)
    try:
        c.login(ALICE, "alicepw")
        assert c.select_folder("INBOX")
    finally:
        c.logout()
    c = imapclient.IMAPClient(dovecot.host, port=dovecot.imap_port, ssl=False, timeout=5)
    try:
        c.starttls(ctx)
        c.login(ALICE, "alicepw")
    finally:
        c.logout()
    # Without the test CA the self-signed certificate is rejected: verification is real.
    with pytest.raises(ssl.SSLCertVerificationError):
        imapclient.IMAPClient(dovecot.host, port=dovecot.imaps_port, ssl=True,
                              ssl_context=ssl.create_default_context(), timeout=5)


def test_stop_start_keeps_mail_ports_and_drops_clients():
    with Dovecot() as server:
        server.add_user(ALICE, "alicepw")
        uid = server.append(ALICE, "INBOX", _msg())
        ports = (server.imap_port, server.imaps_port)
        first_pid = server.pid
        c = server.client(ALICE)
        c.select_folder("INBOX")
        server.stop()
        assert not server.running
        with pytest.raises((OSError, imapclient.exceptions.IMAPClientError)):
            c.fetch([uid], ["RFC822"])  # server stopped mid-session
        with pytest.raises(OSError):
            socket.create_connection((server.host, server.imap_port), timeout=1).close()
        server.start()
        assert (server.imap_port, server.imaps_port) == ports
        assert server.pid != first_pid
        assert server.folder_status(ALICE, "INBOX")["MESSAGES"] == 1
        server.restart()
        c = server.client(ALICE)
        try:
            c.select_folder("INBOX")
            assert c.fetch([uid], ["RFC822"])[uid][b"RFC822"].startswith(b"From:")
        finally:
            c.logout()
    assert not server.root.exists()


def _children(pid: int, command: str) -> set[int]:
    """Processes named `command` whose parent is `pid` (Dovecot's master)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
            if name == command and int(rest[1]) == pid:
                found.add(int(entry.name))
    return found


def test_dovecot_performance_mode_keeps_its_login_processes_and_a_restart_switches_modes():
    with Dovecot(performance=True) as server:
        server.add_user(ALICE, "alicepw")
        deadline = time.monotonic() + 5
        while len(_children(server.pid, "imap-login")) < (os.cpu_count() or 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        ready = _children(server.pid, "imap-login")
        assert len(ready) == (os.cpu_count() or 1)  # process_min_avail: one per core, kept ready
        for _ in range(5):
            c = server.client(ALICE)
            assert c.folder_status("INBOX", ["MESSAGES"])[b"MESSAGES"] == 0
            c.logout()
        assert _children(server.pid, "imap-login") == ready  # the same processes served them all
        server.performance = False
        server.restart()
        c = server.client(ALICE)  # the default mode: a login process per connection
        c.logout()
        assert "service_count = 0" not in server.conf_path.read_text()


class _Introspection(http.server.BaseHTTPRequestHandler):
    tokens: dict[str, str] = {}

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        token = urllib.parse.parse_qs(body).get("token", [""])[0]
        user = self.tokens.get(token)
        answer = {"active": True, "username": user} if user else {"active": False}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_oauth2_passdb_checks_tokens_by_introspection():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Introspection)
    _Introspection.tokens = {"good-token": ALICE}
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/introspect"
    try:
        with Dovecot(oauth2_introspection_url=url) as server:
            server.add_user(ALICE, "alicepw")
            c = imapclient.IMAPClient(server.host, port=server.imap_port, ssl=False, timeout=5)
            try:
                c.oauth2_login(ALICE, "good-token")
                assert c.select_folder("INBOX")
            finally:
                c.logout()
            c = imapclient.IMAPClient(server.host, port=server.imap_port, ssl=False, timeout=5)
            try:
                with pytest.raises(LoginError, match="AUTHENTICATIONFAILED"):
                    c.oauth2_login(ALICE, "bad-token")
            finally:
                c.shutdown()
            server.client(ALICE).logout()  # passwords still work beside OAuth
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_missing_binary_is_an_error_not_a_skip():
    with pytest.raises(ServerStartError, match="not installed"):
        _find_binary("eis-no-such-server")


# ---- Redis -----------------------------------------------------------------------------


def test_redis_server_answers_ping_and_stops():
    with RedisServer() as redis_server:
        assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
        assert redis_server.ping()
        r = redis_server.client()
        r.set("k", "v")
        assert r.get("k") == b"v"
        r.close()
        assert redis_server.start_seconds < 3
    assert not redis_server.ping()


def test_redis_server_with_an_append_only_file_keeps_its_data_across_a_kill(tmp_path):
    redis_server = RedisServer(root=tmp_path, appendonly=True, appendfsync="always")
    try:
        redis_server.start()
        r = redis_server.client()
        r.rpush("rq:queue:sync", "job-1")
        r.close()
        port = redis_server.port
        redis_server._proc.kill()  # no shutdown: only the append-only file keeps the data
        redis_server._proc.wait(5)
        redis_server.stop()
        redis_server.start()
        assert redis_server.port == port
        r = redis_server.client()
        assert r.lrange("rq:queue:sync", 0, -1) == [b"job-1"]
        r.close()
    finally:
        redis_server.close()


# ---- SMTP ------------------------------------------------------------------------------


def test_smtp_sink_receives_after_auth_plain_and_fail_next_gives_451():
    with SmtpSink({"alice@example.test": "smtppw"}) as sink:
        message = _msg(subject="Nabídka", to="Bob <bob@example.test>")
        with smtplib.SMTP(sink.host, sink.port, timeout=5) as smtp:
            with pytest.raises(smtplib.SMTPSenderRefused):  # AUTH is required
                smtp.sendmail(ALICE, ["bob@example.test"], message)
        with smtplib.SMTP(sink.host, sink.port, timeout=5) as smtp:
            with pytest.raises(smtplib.SMTPAuthenticationError):
                smtp.login("alice@example.test", "wrong")
        with smtplib.SMTP(sink.host, sink.port, timeout=5) as smtp:
            smtp.login("alice@example.test", "smtppw")  # smtplib picks PLAIN
            smtp.sendmail(ALICE, ["bob@example.test"], message)
            sink.fail_next(1)
            with pytest.raises(smtplib.SMTPDataError) as failed:
                smtp.sendmail(ALICE, ["bob@example.test"], message)
            assert failed.value.smtp_code == 451
            smtp.sendmail(ALICE, ["bob@example.test", "carol@example.test"], message)
        assert sink.messages == [
            (ALICE, ["bob@example.test"], message),
            (ALICE, ["bob@example.test", "carol@example.test"], message),
        ]
        assert sink.logins == [("PLAIN", "alice@example.test")]


def test_smtp_sink_xoauth2_uses_token_checker():
    def checker(user, token):
        return (user, token) == (ALICE, "tok")

    with SmtpSink(token_checker=checker) as sink:
        def xoauth2(token):
            s = f"user={ALICE}\x01auth=Bearer {token}\x01\x01"
            return lambda challenge=None: s if challenge is None else ""

        with smtplib.SMTP(sink.host, sink.port, timeout=5) as smtp:
            smtp.ehlo()
            with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
                smtp.auth("XOAUTH2", xoauth2("expired"))
            assert failed.value.smtp_code == 535
        with smtplib.SMTP(sink.host, sink.port, timeout=5) as smtp:
            smtp.ehlo()
            code, _ = smtp.auth("XOAUTH2", xoauth2("tok"))
            assert code == 235
            smtp.sendmail(ALICE, ["bob@example.test"], b"Subject: x\r\n\r\nhi\r\n")
        assert sink.logins == [("XOAUTH2", ALICE)]
        assert len(sink.messages) == 1


# ---- messages --------------------------------------------------------------------------


def test_make_message_encodes_utf8_names_and_parts():
    raw = make_message(
        from_=("Jiří Novák", "jiri@example.test"),
        to=["Zoë <zoe@example.test>", "plain@example.test"],
        cc=("Žaneta Dvořáková <zaneta@example.test>",),
        subject="Příliš žluťoučký kůň",
        body="Dobrý den",
        html="<p>Dobrý den</p>",
        date=datetime(2024, 2, 1, 10, 0, tzinfo=timezone.utc),
        attachments=[("nabídka.pdf", "application/pdf", b"%PDF-1.4 test")],
        in_reply_to="<parent@example.test>",
    )
    assert raw.split(b"\r\n\r\n", 1)[0].isascii()  # headers are RFC 2047 encoded
    assert b"\r\n" in raw
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["From"].addresses[0].display_name == "Jiří Novák"
    assert msg["From"].addresses[0].addr_spec == "jiri@example.test"
    assert [a.addr_spec for a in msg["To"].addresses] == ["zoe@example.test", "plain@example.test"]
    assert msg["Cc"].addresses[0].display_name == "Žaneta Dvořáková"
    assert msg["Subject"] == "Příliš žluťoučký kůň"
    assert msg["Message-ID"].endswith("@example.test>")
    assert msg["In-Reply-To"] == "<parent@example.test>"
    assert msg.get_body(("plain",)).get_content().strip() == "Dobrý den"
    assert msg.get_body(("html",)).get_content().strip() == "<p>Dobrý den</p>"
    attachment = next(msg.iter_attachments())
    assert attachment.get_filename() == "nabídka.pdf"
    assert attachment.get_content() == b"%PDF-1.4 test"

    no_id = email.message_from_bytes(make_message(from_="a@x.test", to="b@x.test", subject="s",
                                                  message_id=False))
    assert no_id["Message-ID"] is None
    given = email.message_from_bytes(make_message(from_="a@x.test", to="b@x.test", subject="s",
                                                  message_id="<fixed@x.test>"))
    assert given["Message-ID"] == "<fixed@x.test>"


def test_free_port_is_bindable():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
