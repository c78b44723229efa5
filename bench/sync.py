#!/usr/bin/env python
"""Sync benchmark: first back-fill and quiet polls against a real Dovecot, compared with a floor.

    .venv/bin/python bench/sync.py                      # SQLite file in a temp folder
    .venv/bin/python bench/sync.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/eis_bench
    .venv/bin/python bench/sync.py --breakdown          # + time spent per product function
    .venv/bin/python bench/sync.py --profile /tmp/eis-profile   # + pyinstrument/cProfile files

Everything is set up in a temp folder and removed at the end (also on Ctrl-C or an error):
a Dovecot, a redis-server, the database (schema by the migrations; a PostgreSQL database
named in --database-url is created by this script and dropped at the end - it must not
exist beforehand), 100,000 customers (bulk insert), and Maildir mailboxes written
directly (devservers.Dovecot.write_maildir):

  A   --messages (20,000) messages in the back-fill window, 1% (200) of them with 500
      customers' primary addresses in From/To/Cc: floor, timed in-process back-fill,
      quiet polls
  Q   100 messages (1 customer message): quiet polls, for the ratio
  R5  the newest 5,000 of A's messages, R20 all of them (hard links to A's files; the
      customer messages written anew with fresh Message-IDs): back-filled in a child
      process each, for the worker's peak RSS

The floor is plain imapclient (no database, no product code): UID SEARCH SINCE, the
product's header FETCH in the product's batch size, BODY.PEEK[] of the customer messages.
The product sends the same FETCH commands but reads the header answers with its own reader
(portal.mail.imap.header_records_fast, IMAPClient's parser as its fallback), about 6 times
faster than IMAPClient's parser: that is why a back-fill can take less time than the floor.
--breakdown shows how long the product spends reading the answers and on everything else.
After a warm-up floor run (Dovecot builds its caches then), --runs (5) rounds each run the
floor and the back-fill back to back, in alternating order; the result is the median of
the rounds' ratios. On this kind of machine one run of the same work takes anywhere from
2.3 to 4.3 s: pairing neighbours cancels that drift, where a best floor against one
back-fill did not. The best-of-each ratio is printed too. Before each back-fill but the
first, what the one before stored is deleted, so each does the same work. The process is
prepared as worker.py prepares it before forking a job (portal.jobs.prepare_worker_process).

Peak RSS: each child is started by a small launcher process that is forked before this
process grows, and reports the child's ru_maxrss from wait4 (a child forked from a big
parent inherits the parent's high-water mark in ru_maxrss on Linux). The child's own
VmHWM is printed too; the two agree.

Figures go to stdout, one per line; the last line is `backfill/floor ratio: X`.
Progress goes to stderr with a leading '#'. Timings are wall-clock: other load on the
machine inflates them (the load average is printed); the cpu-seconds lines are steadier.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import email.utils
import gc
import json
import os
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
# devservers, portal and their libraries are imported in the functions that use them: the
# launcher and each child back-fill run this file too, and their peak RSS must not carry them.

PASSWORD = "bench-imap-pass"
OWNER_DOMAIN = "agency.test"
HEADER_FIELDS = b"BODY.PEEK[HEADER.FIELDS (MESSAGE-ID FROM TO CC DATE SUBJECT)]"
MSGID_RE = re.compile(rb"(?im)^message-id:\s*(<[^>\r\n]+>)")
CHILD_ENV = "EIS_BENCH_CHILD"
T0 = time.monotonic()


def note(text: str) -> None:
    print(f"# [{time.monotonic() - T0:7.1f}s] {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------
# The app
# ----------------------------------------------------------------------------------------

def app_config(database_url: str, redis_url: str, key: str) -> dict:
    return {
        "SECRET_KEY": "bench-" + uuid.uuid4().hex,
        "SQLALCHEMY_DATABASE_URI": database_url,
        "REDIS_URL": redis_url,
        "EIS_ENCRYPTION_KEYS": key,
        "EIS_PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000",
        "WTF_CSRF_ENABLED": False,
        "EIS_MAIL_HOSTS_ALLOW": "127.0.0.1",  # the bench's Dovecot runs on loopback
    }


def make_app(config: dict, instance: str):
    os.environ["EIS_INSTANCE_PATH"] = instance  # never the repo's instance/ folder
    from portal import create_app

    return create_app(config)


# ----------------------------------------------------------------------------------------
# Test data
# ----------------------------------------------------------------------------------------

WORDS = ("the quote for next quarter is attached please review pricing delivery schedule we "
         "can meet on thursday to discuss contract terms invoice payment order shipment "
         "warehouse apartment viewing offer mortgage bank valuation kitchen renovation "
         "thanks regards best looking forward to hearing from you soon meeting agenda notes "
         "project update budget approval signed copy scan draft final version").split()
FIRST = ["Jan", "Petra", "Tomas", "Eva", "Karel", "Jana", "Martin", "Lucie", "Pavel", "Anna",
         "John", "Mary", "Peter", "Linda", "George", "Susan", "Mark", "Laura"]
LAST = ["Novak", "Svoboda", "Dvorak", "Cerny", "Prochazka", "Kucera", "Smith", "Jones",
        "Brown", "Taylor", "Miller", "Wilson", "Moore", "Clark"]


FIRST_CZ = ["Jiří", "Tomáš", "Kateřina", "Lukáš", "Žaneta", "Řehoř", "Zdeněk", "Věra"]
LAST_CZ = ["Novák", "Dvořák", "Černý", "Procházka", "Kučera", "Růžička", "Šťastný", "Bláha"]
_ENCODED_NAMES: list[str] = []


def display_name(rng: random.Random, address: str) -> str:
    """A From/Cc value as mailers write them: 40% `Name <addr>`, 30% an RFC 2047 encoded
    name (Czech diacritics), 20% a quoted `"Last, First"`, 10% the bare address."""
    if not _ENCODED_NAMES:
        from email.header import Header

        _ENCODED_NAMES.extend(Header(f"{f} {l}", "utf-8").encode() for f in FIRST_CZ for l in LAST_CZ)
    roll = rng.random()
    if roll < 0.4:
        return f"{rng.choice(FIRST)} {rng.choice(LAST)} <{address}>"
    if roll < 0.7:
        return f"{rng.choice(_ENCODED_NAMES)} <{address}>"
    if roll < 0.9:
        return f'"{rng.choice(LAST)}, {rng.choice(FIRST)}" <{address}>'
    return address


def customer_address(i: int) -> str:
    return f"customer{i:06d}@client{i % 997:03d}.test"


_LINES: list[str] = []


def text_body(rng: random.Random, size: int) -> str:
    """About `size` bytes of plain text: lines drawn from a pool of 12-word lines."""
    if not _LINES:
        pool = random.Random(7)
        _LINES.extend(" ".join(pool.choices(WORDS, k=12)) for _ in range(4000))
    return "\r\n".join(rng.choices(_LINES, k=max(1, size // 80)))


def b64_lines(data: bytes) -> str:
    enc = base64.b64encode(data).decode()
    return "\r\n".join(enc[i:i + 76] for i in range(0, len(enc), 76))


def filler_message(rng: random.Random, owner: str, when: datetime, msgid: str) -> bytes:
    """A non-customer message with realistic headers, built by hand (make_message costs
    2.4 ms a message; this is ~20x faster). A few KB; 2% carry a 50-200 KB attachment."""
    j = rng.randrange(5000)
    domain = f"vendor{j % 211}.test"
    sender = f"{rng.choice(FIRST).lower()}.{rng.choice(LAST).lower()}{j}@{domain}"
    date = email.utils.format_datetime(when)
    subject = " ".join(rng.choices(WORDS, k=rng.randint(3, 8))).capitalize()
    cc = ""
    if rng.random() < 0.3:
        cc = ", ".join(display_name(rng, f"colleague{rng.randrange(2000)}@vendor{rng.randrange(211)}.test")
                       for _ in range(rng.randint(1, 3)))
    head = [
        f"Return-Path: <{sender}>",
        f"Received: from mx{j % 7}.{domain} (mx{j % 7}.{domain} [10.{j % 250}.{rng.randrange(250)}.{rng.randrange(250)}])"
        f"\r\n\tby mail.{OWNER_DOMAIN} with ESMTPS id {uuid.UUID(int=rng.getrandbits(128)).hex[:16]}"
        f"\r\n\tfor <{owner}>; {date}",
        f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s=s1;"
        f"\r\n\th=from:to:subject:date:message-id; bh={b64_lines(rng.randbytes(32))};"
        f"\r\n\tb={b64_lines(rng.randbytes(128)).replace(chr(13) + chr(10), chr(13) + chr(10) + chr(9))}",
        f"Message-ID: {msgid}",
        f"Date: {date}",
        f"From: {display_name(rng, sender)}",
        f"To: {owner}",
    ]
    if cc:
        head.append(f"Cc: {cc}")
    head += [f"Subject: {subject}", "MIME-Version: 1.0", "X-Mailer: bench/1.0"]
    body = text_body(rng, rng.randint(1500, 6000))
    if rng.random() < 0.02:
        boundary = "b-" + uuid.UUID(int=rng.getrandbits(128)).hex
        data = rng.randbytes(rng.randint(50_000, 200_000))
        head.append(f'Content-Type: multipart/mixed; boundary="{boundary}"')
        text = "\r\n".join([
            "\r\n".join(head), "",
            f"--{boundary}", 'Content-Type: text/plain; charset="utf-8"', "Content-Transfer-Encoding: 7bit", "",
            body, "",
            f"--{boundary}", 'Content-Type: application/pdf; name="report.pdf"',
            "Content-Transfer-Encoding: base64", 'Content-Disposition: attachment; filename="report.pdf"', "",
            b64_lines(data), "",
            f"--{boundary}--", "",
        ])
    else:
        head += ['Content-Type: text/plain; charset="utf-8"', "Content-Transfer-Encoding: 7bit"]
        text = "\r\n".join(head) + "\r\n\r\n" + body + "\r\n"
    return text.encode()


def customer_message(rng: random.Random, owner: str, when: datetime, msgid: str, customers: list[int]) -> bytes:
    """A message with 2-3 customers' primary addresses in From/To/Cc (through make_message)."""
    from devservers import make_message

    def person(i: int):
        return (f"{FIRST[i % len(FIRST)]} {LAST[i % len(LAST)]}", customer_address(i))

    others = [person(c) for c in customers[1:]]
    if rng.random() < 0.5:  # the customer writes, others in copy
        from_, to, cc = person(customers[0]), owner, others
    else:  # the rep writes
        from_, to, cc = owner, person(customers[0]), others
    if rng.random() < 0.3:
        cc = cc + [f"someone{rng.randrange(100)}@elsewhere.test"]
    attachments = ()
    if rng.random() < 0.3:
        attachments = [("offer.pdf", "application/pdf", rng.randbytes(rng.randint(50_000, 200_000)))]
    return make_message(from_=from_, to=to, cc=cc, subject="Re: " + " ".join(rng.choices(WORDS, k=5)),
                        body=text_body(rng, rng.randint(1500, 6000)), message_id=msgid, date=when,
                        attachments=attachments, headers={"X-Mailer": "bench/1.0"})


def build_mailbox(rng: random.Random, owner: str, n: int, matched_customers: list[int], tag: str):
    """Messages oldest first (Maildir file order gives UID order), all inside the window:
    INTERNALDATE spread over the last 29.5 days. 1% (at least 1) involve customers; the
    `matched_customers` are spread over them, 2 or 3 per message. Returns (messages,
    message ids of the customer messages, plan: [(when, customer ids or None)] per message)."""
    n_matched = max(1, n // 100)
    positions = set(rng.sample(range(n), n_matched))
    per = [matched_customers[(k * len(matched_customers)) // n_matched:((k + 1) * len(matched_customers)) // n_matched]
           for k in range(n_matched)]
    now = datetime.now().astimezone()
    span = timedelta(days=29.5).total_seconds()
    messages, matched_ids, plan, k = [], set(), [], 0
    for i in range(n):
        when = now - timedelta(seconds=span * (n - i) / n) + timedelta(seconds=rng.randint(0, 59))
        msgid = f"<{tag}.{i}.{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}@bench.test>"
        if i in positions:
            customers = per[k] or [matched_customers[k % len(matched_customers)]]
            k += 1
            data = customer_message(rng, owner, when, msgid, customers)
            matched_ids.add(msgid.encode())
            plan.append((when, customers))
        else:
            data = filler_message(rng, owner, when, msgid)
            plan.append((when, None))
        flags = "S" if rng.random() < 0.9 else ""
        messages.append((data, flags, when.timestamp()))
    return messages, matched_ids, plan


def derive_mailbox(dovecot, rng: random.Random, owner: str, src_paths: list[Path], plan: list,
                   indices: range, tag: str) -> tuple[set[bytes], int]:
    """Another user's INBOX made of the messages `indices` of a written mailbox: the other
    messages are hard links to the same files (no new data to write or remove), the customer
    messages are written anew with fresh Message-IDs (so nothing de-duplicates against the
    first mailbox) under names that keep their place in the UID order. The linked messages
    are addressed to the first mailbox, an internal address here: they are ignored as
    `internal` instead of `no_customer`, after the same work (headers fetched, parsed, decided)."""
    from devservers import MAIL_GID, MAIL_UID

    dovecot.write_maildir(owner, "INBOX", [])  # the Maildir folders
    target = dovecot.maildir_path(owner, "INBOX")
    ids: set[bytes] = set()
    size = 0
    for i in indices:
        src = src_paths[i]
        when, customers = plan[i]
        if customers is None:
            os.link(src, target / "cur" / src.name)
            size += src.stat().st_size
            continue
        msgid = f"<{tag}.{i}.{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}@bench.test>"
        data = customer_message(rng, owner, when, msgid, customers)
        ids.add(msgid.encode())
        size += len(data)
        prefix, flags = src.name.split(",S=")[0], src.name.rsplit(":2,", 1)[1]
        vsize = len(data) + data.count(b"\n") - data.count(b"\r\n")
        name = f"{prefix},S={len(data)},W={vsize}"
        tmp_path = target / "tmp" / name
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fchown(fd, MAIL_UID, MAIL_GID)
            os.utime(fd, (when.timestamp(), when.timestamp()))
        finally:
            os.close(fd)
        os.rename(tmp_path, target / "cur" / f"{name}:2,{flags}")
    return ids, size


def seed_crm(db, n_customers: int, is_pg: bool) -> None:
    from portal.models import Customer, CustomerPrimaryEmail, Deal, DealCustomer

    now = datetime.utcnow().replace(microsecond=0)
    customers = [{"id": i, "external_id": f"C-{i:06d}", "name": f"{FIRST[i % len(FIRST)]} {LAST[i % len(LAST)]} {i}",
                  "created_at": now, "updated_at": now} for i in range(1, n_customers + 1)]
    primaries = [{"id": i, "customer_id": i, "address": customer_address(i), "since": None, "until": None}
                 for i in range(1, n_customers + 1)]
    # Deals: 40% of the customers in pairs (primary + additional customer).
    n_deals = (n_customers * 4 // 10) // 2
    deals = [{"id": d, "external_id": f"D-{d:06d}", "name": f"Deal {d}", "owner_id": None,
              "created_at": now, "updated_at": now} for d in range(1, n_deals + 1)]
    members = []
    for d in range(1, n_deals + 1):
        members.append({"id": 2 * d - 1, "deal_id": d, "customer_id": 2 * d - 1, "role": "primary"})
        members.append({"id": 2 * d, "deal_id": d, "customer_id": 2 * d, "role": "additional"})
    with db.engine.begin() as conn:
        for table, rows in ((Customer.__table__, customers), (CustomerPrimaryEmail.__table__, primaries),
                            (Deal.__table__, deals), (DealCustomer.__table__, members)):
            if not rows:
                continue
            if is_pg:
                # COPY: 5x faster than executemany on PostgreSQL (SQLAlchemy's executemany is
                # one statement a row there without RETURNING).
                columns = list(rows[0])
                cursor = conn.connection.driver_connection.cursor()
                with cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row([row[c] for c in columns])
                conn.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), {len(rows)})")
            else:  # SQLAlchemy core executemany
                for start in range(0, len(rows), 20_000):
                    conn.execute(table.insert(), rows[start:start + 20_000])


# ----------------------------------------------------------------------------------------
# Floor: plain imapclient, no database, no product code
# ----------------------------------------------------------------------------------------

class GcClock:
    """Time spent in the cyclic garbage collector while active (gc.callbacks)."""

    def __init__(self):
        self.seconds, self.collections, self._t = 0.0, 0, None

    def _callback(self, phase, info):
        if phase == "start":
            self._t = time.perf_counter()
        elif self._t is not None:
            self.seconds += time.perf_counter() - self._t
            self.collections += 1
            self._t = None

    def __enter__(self):
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc):
        gc.callbacks.remove(self._callback)


def floor_once(host: str, port: int, address: str, since_day, batch: int, body_cap: int,
               matched_ids: set[bytes]) -> dict:
    with GcClock() as gc_clock:
        result = _floor_fetch(host, port, address, since_day, batch, body_cap, matched_ids)
    return {**result, "gc": gc_clock.seconds}


def _floor_fetch(host: str, port: int, address: str, since_day, batch: int, body_cap: int,
                 matched_ids: set[bytes]) -> dict:
    from imapclient import IMAPClient

    t0, c0 = time.perf_counter(), time.process_time()
    client = IMAPClient(host, port=port, ssl=False, timeout=60)
    client.login(address, PASSWORD)
    client.select_folder("INBOX", readonly=True)
    uids = sorted(client.search(["SINCE", since_day]), reverse=True)  # newest first, as the product
    wanted: list[tuple[int, int]] = []
    header_bytes = 0
    for start in range(0, len(uids), batch):
        data = client.fetch(uids[start:start + batch],
                            [b"UID", b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", HEADER_FIELDS])
        for uid, item in data.items():
            header = next((v for k, v in item.items() if k.startswith(b"BODY[HEADER")), b"") or b""
            header_bytes += len(header)
            m = MSGID_RE.search(header)
            if m and m.group(1) in matched_ids:
                wanted.append((uid, int(item[b"RFC822.SIZE"])))
    body_bytes = 0
    group, size = [], 0
    for uid, n in wanted + [(None, 0)]:
        if uid is not None:
            group.append(uid)
            size += n
        if group and (uid is None or size >= body_cap):
            for item in client.fetch(group, [b"BODY.PEEK[]"]).values():
                body_bytes += len(item.get(b"BODY[]", b"") or b"")
            group, size = [], 0
    client.logout()
    return {"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0, "uids": len(uids),
            "bodies": len(wanted),
            "header_bytes": header_bytes, "body_bytes": body_bytes}


# ----------------------------------------------------------------------------------------
# The product's back-fill, in-process, as the worker's job runs it
# ----------------------------------------------------------------------------------------

def backfill_once(run_sync, mailbox_id: int, messages: int, customer_messages: int) -> dict:
    """One first back-fill of the mailbox (run forget_backfill before any but the first)."""
    with GcClock() as gc_clock:
        t, c = time.perf_counter(), time.process_time()
        run = run_sync(mailbox_id, trigger="backfill")
        seconds, cpu = time.perf_counter() - t, time.process_time() - c
    if run is None or run.status != "succeeded":
        raise RuntimeError(f"back-fill failed: {run and (run.error_class, run.error_detail)}")
    summary = {"seen": run.seen, "logged": run.logged, "duplicates": run.duplicates,
               "ignored": dict(run.ignored or {}), "bytes": run.bytes_fetched,
               "imap_commands": run.imap_commands, "bad": run.bad_messages}
    if run.seen != messages or run.logged != customer_messages:
        raise RuntimeError(f"back-fill saw {run.seen}/{messages} and logged {run.logged}/"
                           f"{customer_messages}: the benchmark's mail is not what it should be")
    return {"seconds": seconds, "cpu": cpu, "gc": gc_clock.seconds, "run": summary}


def forget_backfill(db, mailbox_id: int) -> None:
    """Undo a back-fill so the next one does the same work: the mailbox's emails, their
    sources and activities, its runs and folder checkpoints go (nothing else is stored)."""
    from sqlalchemy import delete, select

    from portal.models import Activity, Email, EmailSource, FolderCheckpoint, Mailbox, SyncRun

    email_ids = db.session.scalars(select(EmailSource.email_id).where(EmailSource.mailbox_id == mailbox_id)).all()
    db.session.execute(delete(Activity).where(Activity.mailbox_id == mailbox_id))
    db.session.execute(delete(EmailSource).where(EmailSource.mailbox_id == mailbox_id))
    for start in range(0, len(email_ids), 500):
        db.session.execute(delete(Email).where(Email.id.in_(email_ids[start:start + 500])))
    db.session.execute(delete(SyncRun).where(SyncRun.mailbox_id == mailbox_id))
    db.session.execute(delete(FolderCheckpoint).where(FolderCheckpoint.mailbox_id == mailbox_id))
    mailbox = db.session.get(Mailbox, mailbox_id)
    mailbox.state, mailbox.last_sync_at, mailbox.last_success_at = "pending", None, None
    db.session.commit()
    db.session.remove()


QUIET_STATUS = [b"UIDNEXT", b"UIDVALIDITY", b"MESSAGES", b"HIGHESTMODSEQ"]


def quiet_floor_once(host: str, port: int, address: str, known: list[str] | None = None) -> float:
    """What a quiet poll needs at least, in plain imapclient: connect, log in, LIST, STATUS of
    each synced folder (all but Drafts/Junk/Trash), log out. With `known` folders: STATUS
    those first, then LIST (Dovecot 2.3 makes a STATUS of a big Maildir INBOX that follows a
    LIST in the same session ~30 ms slower; before the LIST it is ~1 ms)."""
    from imapclient import IMAPClient

    t0 = time.perf_counter()
    client = IMAPClient(host, port=port, ssl=False, timeout=60)
    client.login(address, PASSWORD)
    for name in known or ():
        client.folder_status(name, QUIET_STATUS)
    for flags, _sep, name in client.list_folders():
        if name not in (known or ()) and not {b"\\Drafts", b"\\Junk", b"\\Trash", b"\\Noselect"} & set(flags):
            client.folder_status(name, QUIET_STATUS)
    client.logout()
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------
# Profiling (optional)
# ----------------------------------------------------------------------------------------

# (label, "module:attribute path", depth) - inclusive wall time of each, nested as shown.
BREAKDOWN = [
    ("open_imap (connect, login)", "portal.accounts.sessions:open_imap", 1),
    ("ImapSession.list_folders (LIST)", "portal.mail.imap:ImapSession.list_folders", 1),
    ("ImapSession.status (STATUS)", "portal.mail.imap:ImapSession.status", 1),
    ("ImapSession.close (LOGOUT)", "portal.mail.imap:ImapSession.close", 1),
    ("sync._finish_success", "portal.sync:_finish_success", 1),
    ("sync._interval (runs of the last day)", "portal.sync:_interval", 2),
    ("release_lock_of_run", "portal.sync:release_lock_of_run", 1),
    ("ImapSession.fetch_headers", "portal.mail.imap:ImapSession.fetch_headers", 1),
    ("IMAPClient.fetch (headers+bodies)", "imapclient.imapclient:IMAPClient.fetch", 2),
    ("ImapSession._fetch_raw (UID FETCH, imaplib)", "portal.mail.imap:ImapSession._fetch_raw", 2),
    ("imap.header_records_fast (reading the answers)", "portal.mail.imap:header_records_fast", 2),
    ("imap.header_records (IMAPClient's parser, fallback)", "portal.mail.imap:header_records", 2),
    ("ImapSession.uids_since (SEARCH)", "portal.mail.imap:ImapSession.uids_since", 1),
    ("MailboxSync._store_batch", "portal.sync:MailboxSync._store_batch", 1),
    ("parse.parse_headers", "portal.mail.parse:parse_headers", 2),
    ("BytesParser.parsebytes", "email.parser:BytesParser.parsebytes", 3),
    ("email.utils.getaddresses", "email.utils:getaddresses", 3),
    ("decode.decode_words", "portal.mail.decode:decode_words", 3),
    ("MailboxSync._crm_for (customer query)", "portal.sync:MailboxSync._crm_for", 2),
    ("rules.decide", "portal.mail.rules:decide", 2),
    ("MailboxSync._known_emails", "portal.sync:MailboxSync._known_emails", 2),
    ("MailboxSync._fetch_bodies", "portal.sync:MailboxSync._fetch_bodies", 2),
    ("ImapSession.fetch_bodies", "portal.mail.imap:ImapSession.fetch_bodies", 3),
    ("MailboxSync._store_one", "portal.sync:MailboxSync._store_one", 2),
    ("MailboxSync._new_email", "portal.sync:MailboxSync._new_email", 3),
    ("parse.parse_message", "portal.mail.parse:parse_message", 4),
    ("Session.commit", "sqlalchemy.orm.session:Session.commit", 1),
    ("Session.flush (incl. autoflush)", "sqlalchemy.orm.session:Session.flush", 1),
    ("MailboxSync._heartbeat", "portal.sync:MailboxSync._heartbeat", 1),
    ("MailboxSync._phase", "portal.sync:MailboxSync._phase", 1),
]


class Breakdown:
    """Wraps the functions in BREAKDOWN with timers (in this process only; no product file
    is touched). A wrapper costs about a microsecond a call; recursion is counted once."""

    def __init__(self):
        import importlib

        self.totals: dict[str, list] = {}
        self._undo = []
        for label, target, _depth in BREAKDOWN:
            module_name, path = target.split(":")
            owner = importlib.import_module(module_name)
            *parents, attr = path.split(".")
            for name in parents:
                owner = getattr(owner, name)
            original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
            self._undo.append((owner, attr, original))
            setattr(owner, attr, self._wrap(label, original))

    def _wrap(self, label, func):
        import functools

        totals = self.totals.setdefault(label, [0, 0.0, 0])  # calls, seconds, active

        @functools.wraps(func)
        def timed(*args, **kwargs):
            if totals[2]:
                return func(*args, **kwargs)
            totals[2] = 1
            t = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                totals[0] += 1
                totals[1] += time.perf_counter() - t
                totals[2] = 0

        return timed

    def reset(self):
        for v in self.totals.values():
            v[0], v[1] = 0, 0.0

    def close(self):
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)

    def lines(self, whole: float) -> list[str]:
        out = []
        for label, _target, depth in BREAKDOWN:
            calls, seconds, _ = self.totals[label]
            if calls:
                out.append(f"breakdown {'  ' * depth}{label}: {seconds:.3f} s, {100 * seconds / whole:.1f}%, "
                           f"{calls} calls")
        return out


@contextlib.contextmanager
def profiled(kind: str | None, out: Path | None, name: str):
    if not kind or out is None:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    if kind == "pyinstrument":
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001)
        profiler.start()
        try:
            yield
        finally:
            profiler.stop()
            (out / f"{name}.pyinstrument.txt").write_text(profiler.output_text(unicode=True, show_all=False))
            (out / f"{name}.pyinstrument.html").write_text(profiler.output_html())
    else:
        import cProfile
        import io
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        try:
            yield
        finally:
            profiler.disable()
            profiler.dump_stats(str(out / f"{name}.pstats"))
            buf = io.StringIO()
            stats = pstats.Stats(profiler, stream=buf).sort_stats("tottime")
            stats.print_stats(40)
            buf.write("\n\n=== by cumulative time ===\n")
            stats.sort_stats("cumulative").print_stats(60)
            (out / f"{name}.cprofile.txt").write_text(buf.getvalue())
    note(f"profile of {name} written to {out}")


# ----------------------------------------------------------------------------------------
# Child process: one back-fill, for the worker's peak RSS
# ----------------------------------------------------------------------------------------

class RssTracer:
    """Samples this process's RSS every few ms; at each new high, keeps the main thread's
    stack, so the report can say where the peak happened (--rss-trace)."""

    def __init__(self, interval: float = 0.005):
        import threading

        self.interval, self.peak_kb, self.stack, self.timeline = interval, 0, [], []
        self.main = threading.main_thread().ident
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
        self._t0 = time.perf_counter()

    def _rss_kb(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page_kb

    def _loop(self) -> None:
        import traceback

        last_note = 0.0
        while not self._stop.wait(self.interval):
            rss = self._rss_kb()
            now = time.perf_counter() - self._t0
            if now - last_note > 0.25:
                self.timeline.append((round(now, 2), rss // 1024))
                last_note = now
            if rss > self.peak_kb + 1024:
                self.peak_kb = rss
                frame = sys._current_frames().get(self.main)
                self.stack = [f"{fs.filename.replace(str(ROOT) + '/', '')}:{fs.lineno} {fs.name}"
                              for fs in traceback.extract_stack(frame)[-14:]] if frame else []
                self.timeline.append((round(now, 2), rss // 1024, "peak"))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _vmhwm_kb() -> int:
    """This process's own peak RSS since its exec (VmHWM)."""
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))


def child_backfill() -> int:
    spec = json.loads(os.environ[CHILD_ENV])
    app = make_app(spec["config"], spec["instance"])
    from portal.jobs.worker import prepare_worker_process
    from portal.sync import run_sync

    prepare_worker_process()  # as worker.py does
    tracer = RssTracer() if spec.get("rss_trace") else contextlib.nullcontext()
    with app.app_context(), tracer:
        t0 = time.perf_counter()
        run = run_sync(spec["mailbox_id"], trigger="backfill")
        seconds = time.perf_counter() - t0
        result = {"seconds": seconds, "status": run.status, "seen": run.seen, "logged": run.logged,
                  "imap_commands": run.imap_commands, "error": run.error_detail,
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "vmhwm_kb": _vmhwm_kb()}
    if isinstance(tracer, RssTracer):
        result["rss_peak_stack"] = tracer.stack
        result["rss_timeline_mb"] = tracer.timeline
    print("CHILD-RESULT " + json.dumps(result), flush=True)
    return 0


def launcher() -> int:
    """A small process started before the benchmark grows: it starts each child back-fill
    and reports the child's ru_maxrss from wait4.

    Why: on Linux a child's ru_maxrss (RUSAGE_CHILDREN, wait4) counts the memory of the
    process it was forked from, up to its exec (exec_mmap keeps the old mm's high-water
    mark), so a child of the benchmark itself (several hundred MB by then) would report the
    benchmark's size, not the worker's. Forked from this ~15 MB launcher it reports its own."""
    # Ctrl-C reaches the whole process group: the benchmark ends this process and its child
    # itself (cleanup), so both ignore it (an ignored signal stays ignored across exec).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for line in sys.stdin:
        spec = json.loads(line)
        env = dict(os.environ, **{CHILD_ENV: json.dumps(spec)})
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child-backfill"],
                                env=env, stdout=subprocess.PIPE, cwd=str(ROOT))
        out = proc.stdout.read().decode()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        print(json.dumps({"exit": proc.returncode, "stdout": out, "ru_maxrss_kb": usage.ru_maxrss,
                          "launcher_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}),
              flush=True)
    return 0


def start_launcher() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--launcher"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(ROOT))


def run_child(state: dict, spec: dict) -> tuple[dict, int]:
    """Run a child back-fill through the launcher; returns (its result, its ru_maxrss in KB)."""
    launcher_proc = state["launcher"]
    launcher_proc.stdin.write(json.dumps(spec) + "\n")
    launcher_proc.stdin.flush()
    answer = launcher_proc.stdout.readline()
    if not answer:
        raise RuntimeError("the launcher process died")
    answer = json.loads(answer)
    out = answer["stdout"]
    line = next((ln for ln in out.splitlines() if ln.startswith("CHILD-RESULT ")), None)
    if answer["exit"] != 0 or line is None:
        raise RuntimeError(f"child back-fill failed (exit {answer['exit']}):\n{out}")
    result = json.loads(line[len("CHILD-RESULT "):])
    result["launcher_maxrss_kb"] = answer["launcher_maxrss_kb"]
    return result, answer["ru_maxrss_kb"]


# ----------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=20000, help="messages in the big mailbox (default 20000)")
    p.add_argument("--customers", type=int, default=100000, help="customers in the database (default 100000)")
    p.add_argument("--database-url", default=None,
                   help="PostgreSQL URL whose database this script creates and drops "
                        "(default: a SQLite file in the temp folder)")
    p.add_argument("--quiet-polls", type=int, default=20, help="quiet polls per mailbox (default 20)")
    p.add_argument("--runs", type=int, default=5,
                   help="rounds of one floor and one back-fill run each; the median of the rounds' "
                        "ratios is the result (default 5)")
    p.add_argument("--small-rss-messages", type=int, default=5000, help="the smaller RSS back-fill (default 5000)")
    p.add_argument("--skip-rss", action="store_true", help="skip the child-process peak RSS back-fills")
    p.add_argument("--rss-trace", action="store_true",
                   help="sample the children's RSS and print where the peak happened")
    p.add_argument("--profile", type=Path, default=None,
                   help="folder for profiles of the floor and the in-process back-fill (slows both)")
    p.add_argument("--profiler", choices=("pyinstrument", "cprofile"), default="pyinstrument")
    p.add_argument("--breakdown", action="store_true",
                   help="time the back-fill's main functions (and the floor's IMAPClient.fetch) "
                        "with light wrappers and print each one's share")
    p.add_argument("--seed", type=int, default=20240601)
    p.add_argument("--child-backfill", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--launcher", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def pg_admin_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    name = parts.path.lstrip("/") or f"eis_bench_{os.getpid()}"
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise SystemExit(f"database name {name!r}: use letters, digits and _ only")
    admin = parts._replace(path="/postgres").geturl()
    return admin, name


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child_backfill:
        return child_backfill()
    if args.launcher:
        return launcher()
    if args.messages < 200 or args.customers < 1000:
        raise SystemExit("--messages must be at least 200 and --customers at least 1000")

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    state: dict = {"launcher": None}
    started: dict = {}  # what run() started, so cleanup() stops it whatever happened
    tmp = Path(tempfile.mkdtemp(prefix="eis-bench-"))
    try:
        if not args.skip_rss:
            state["launcher"] = start_launcher()  # now, while this process is small
        return run(args, tmp, state, started)
    finally:
        cleanup(state, started, tmp)


def cleanup(state: dict, started: dict, tmp: Path) -> None:
    t = time.perf_counter()
    launcher_proc = state.get("launcher")
    if launcher_proc is not None:
        with contextlib.suppress(Exception):
            launcher_proc.stdin.close()  # it exits at end of input (a running child is ended below)
        try:
            launcher_proc.wait(2)
        except subprocess.TimeoutExpired:
            # Interrupted mid back-fill: end the child (the launcher's only child), then the launcher.
            with contextlib.suppress(Exception):
                for pid in _children_of(launcher_proc.pid):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                launcher_proc.kill()
                launcher_proc.wait(5)
    app = started.get("app")
    if app is not None:
        with contextlib.suppress(Exception):
            from portal.extensions import db

            with app.app_context():
                db.session.remove()
                db.engine.dispose()
    for name in ("dovecot", "redis"):
        server = started.get(name)
        if server is not None:
            t1 = time.perf_counter()
            with contextlib.suppress(Exception):
                server.close()
            note(f"{name} stopped in {time.perf_counter() - t1:.1f}s")
    pg = started.get("pg")
    if pg is not None:
        admin, dbname = pg
        with contextlib.suppress(Exception):
            import sqlalchemy as sa

            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
            admin.dispose()
            note(f"dropped PostgreSQL database {dbname}")
    t1 = time.perf_counter()
    shutil.rmtree(tmp, ignore_errors=True)
    note(f"temp folder removed in {time.perf_counter() - t1:.1f}s; cleaned up in {time.perf_counter() - t:.1f}s")


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def run(args, tmp: Path, state: dict, started: dict) -> int:
    import sqlalchemy as sa
    from cryptography.fernet import Fernet

    from devservers import Dovecot, RedisServer

    rng = random.Random(args.seed)
    wall0 = time.perf_counter()
    load_start = os.getloadavg()[0]
    instance = tmp / "instance"
    instance.mkdir()

    # -- servers -----------------------------------------------------------------------
    redis_server = RedisServer(root=tmp / "redis")
    started["redis"] = redis_server
    redis_server.start()
    dovecot = Dovecot(root=tmp / "dovecot")
    started["dovecot"] = dovecot
    dovecot.start()
    note(f"redis on {redis_server.port}, dovecot on {dovecot.imap_port}")

    # -- database ----------------------------------------------------------------------
    if args.database_url:
        admin_url, dbname = pg_admin_url(args.database_url)
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": dbname}).first()
            if exists:
                admin.dispose()
                raise SystemExit(f"database {dbname} already exists: this script only drops what it "
                                 "creates; name a new one")
            conn.execute(sa.text(f'CREATE DATABASE "{dbname}"'))
        started["pg"] = (admin, dbname)
        database_url = urlsplit(args.database_url)._replace(path="/" + dbname).geturl()
        backend = "postgresql"
    else:
        database_url = "sqlite:///" + str(tmp / "eis.sqlite3")
        backend = "sqlite"
    config = app_config(database_url, redis_server.url, Fernet.generate_key().decode())
    app = make_app(config, str(instance))
    started["app"] = app

    from flask_migrate import upgrade

    from portal.mail import imap as product_imap

    if product_imap.HEADER_FIELDS != HEADER_FIELDS:
        raise SystemExit(f"the product now fetches {product_imap.HEADER_FIELDS!r}: update the floor's "
                         f"HEADER_FIELDS ({HEADER_FIELDS!r}) to match")

    from portal.accounts import linking as mailbox_service
    from portal.extensions import db
    from portal.jobs.worker import prepare_worker_process
    from portal.models import Mailbox, SyncRun, User
    from portal.sync import run_sync

    with app.app_context():
        upgrade()
        note(f"schema migrated ({backend})")
        t = time.perf_counter()
        seed_crm(db, args.customers, backend == "postgresql")
        if backend == "postgresql":
            # What autovacuum does within a minute of a bulk load in production; without it
            # the planner has no statistics and scans customer_primary_emails sequentially.
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("ANALYZE")
        note(f"{args.customers} customers inserted in {time.perf_counter() - t:.1f}s")
        user = User(email="bench-rep@crm.test", role="rep")
        user.set_password("bench-password")
        db.session.add(user)
        db.session.commit()
        user_id = user.id

    # -- mail --------------------------------------------------------------------------
    all_ids = list(range(1, args.customers + 1))
    matched_customers = rng.sample(all_ids, 500)
    boxes = {"A": args.messages, "Q": 100}
    if not args.skip_rss:
        boxes.update({"R5": min(args.small_rss_messages, args.messages), "R20": args.messages})
    addresses, matched = {}, {}
    t = time.perf_counter()
    for name in boxes:
        addresses[name] = f"bench-{name.lower()}@{OWNER_DOMAIN}"
        dovecot.add_user(addresses[name], PASSWORD)
    for name in ("A", "Q"):
        messages, matched[name], plan = build_mailbox(rng, addresses[name], boxes[name], matched_customers,
                                                      name.lower())
        paths = dovecot.write_maildir(addresses[name], "INBOX", messages)
        size = sum(len(m[0]) for m in messages)
        del messages
        if name == "A":
            a_paths, a_plan = paths, plan
        note(f"mailbox {name}: {boxes[name]} messages, {len(matched[name])} with customers, {size / 1e6:.1f} MB")
    for name in ("R5", "R20"):
        if name in boxes:  # the newest n of A's messages, linked; customer messages written anew
            n = boxes[name]
            matched[name], size = derive_mailbox(dovecot, rng, addresses[name], a_paths, a_plan,
                                                 range(args.messages - n, args.messages), name.lower())
            note(f"mailbox {name}: {n} messages, {len(matched[name])} with customers, {size / 1e6:.1f} MB "
                 "(hard links to A's but for the customer messages)")
    note(f"mail written in {time.perf_counter() - t:.1f}s")

    batch = app.config["EIS_HEADER_BATCH"]
    body_cap = app.config["EIS_BODY_BATCH_BYTES"]
    backfill_days = app.config["EIS_BACKFILL_DAYS"]
    since_day = (datetime.utcnow() - timedelta(days=backfill_days + 1)).date()

    def floor_run() -> dict:
        return floor_once(dovecot.host, dovecot.imap_port, addresses["A"], since_day, batch, body_cap, matched["A"])

    # -- link ------------------------------------------------------------------------------
    def settings(address):
        return mailbox_service.ImapSettings(address=address, login=address, password=PASSWORD,
                                            imap_host=dovecot.host, imap_port=dovecot.imap_port,
                                            imap_security="none")

    mailbox_ids = {}
    with app.app_context():
        owner = db.session.get(User, user_id)
        for name in boxes:
            mailbox, _ = mailbox_service.link_imap_mailbox(owner, settings(addresses[name]))
            db.session.commit()
            mailbox_ids[name] = mailbox.id
        db.session.remove()

    # What worker.py does before it forks a job's work horse (the bench runs the job in-process).
    prepare_worker_process()

    # -- floor and back-fill in rounds: each round runs one of each, back to back -----------
    def checked_floor(label: str) -> dict:
        f = floor_run()
        note(f"{label}: {f['seconds']:.3f}s, {f['uids']} UIDs, {f['bodies']} bodies, "
             f"{f['header_bytes'] / 1e6:.1f} MB headers, {f['body_bytes'] / 1e6:.1f} MB bodies")
        if f["bodies"] != len(matched["A"]):
            raise RuntimeError(f"floor found {f['bodies']} customer messages, expected {len(matched['A'])}")
        return f

    floors, backfills, ratios = [], [], []
    with app.app_context():
        checked_floor("warm-up floor run (Dovecot builds its caches; not counted)")
        for i in range(args.runs):
            if i:
                forget_backfill(db, mailbox_ids["A"])
            first_floor = i % 2 == 0  # alternate the order, so neither side always goes first
            f = checked_floor(f"round {i + 1} floor") if first_floor else None
            b = backfill_once(run_sync, mailbox_ids["A"], args.messages, len(matched["A"]))
            note(f"round {i + 1} back-fill: {b['seconds']:.3f}s {b['run']}")
            if not first_floor:
                f = checked_floor(f"round {i + 1} floor")
            floors.append(f)
            backfills.append(b)
            ratios.append(b["seconds"] / f["seconds"])
        floor_best = min(floors, key=lambda f: f["seconds"])
        backfill_best = min(backfills, key=lambda b: b["seconds"])
        floor, backfill = floor_best["seconds"], backfill_best["seconds"]
        backfill_run = backfill_best["run"]

        floor_breakdown, breakdown_lines = [], []
        if args.breakdown:  # one more of each, timed by function
            fb = Breakdown()
            f = floor_run()
            fb.close()
            floor_breakdown = [f"floor breakdown: extra floor run {f['seconds']:.3f} s"] + [
                ln.replace("breakdown ", "floor breakdown ") for ln in fb.lines(f["seconds"])]
            forget_backfill(db, mailbox_ids["A"])
            breakdown = Breakdown()
            b = backfill_once(run_sync, mailbox_ids["A"], args.messages, len(matched["A"]))
            breakdown.close()
            breakdown_lines = [f"breakdown: extra back-fill run {b['seconds']:.3f} s"] + breakdown.lines(b["seconds"])
        if args.profile:
            with profiled(args.profiler, args.profile, "floor"):
                floor_run()
            forget_backfill(db, mailbox_ids["A"])
            with profiled(args.profiler, args.profile, "backfill"):
                backfill_once(run_sync, mailbox_ids["A"], args.messages, len(matched["A"]))

        run = run_sync(mailbox_ids["Q"], trigger="backfill")
        if run.status != "succeeded" or run.logged != len(matched["Q"]):
            raise RuntimeError(f"back-fill of Q: {run.status} {run.logged} {run.error_detail}")
        db.session.commit()
        db.session.remove()

        # -- quiet polls -----------------------------------------------------------------
        polls: dict[str, list[float]] = {"A": [], "Q": []}
        commands: dict[str, set[int]] = {"A": set(), "Q": set()}
        for _ in range(2):  # warm-up: connection pools, Dovecot's login processes
            for name in ("A", "Q"):
                run_sync(mailbox_ids[name], trigger="scheduled")
                db.session.remove()
        quiet_floor: dict[str, list[float]] = {"A": [], "Q": []}
        quiet_floor_first: dict[str, list[float]] = {"A": [], "Q": []}
        known = sorted(cp.name for cp in db.session.get(Mailbox, mailbox_ids["A"]).checkpoints)
        db.session.remove()
        for i in range(args.quiet_polls):
            for name in (("A", "Q") if i % 2 == 0 else ("Q", "A")):
                quiet_floor[name].append(quiet_floor_once(dovecot.host, dovecot.imap_port, addresses[name]))
                quiet_floor_first[name].append(
                    quiet_floor_once(dovecot.host, dovecot.imap_port, addresses[name], known))
                t = time.perf_counter()
                run = run_sync(mailbox_ids[name], trigger="scheduled")
                polls[name].append(time.perf_counter() - t)
                if run.status != "succeeded" or run.seen:
                    raise RuntimeError(f"quiet poll of {name} was not quiet: {run.status} seen={run.seen}")
                commands[name].add(run.imap_commands)
                db.session.remove()
        quiet_a = statistics.median(polls["A"]) * 1000
        quiet_q = statistics.median(polls["Q"]) * 1000
        quiet_breakdown: list[str] = []
        if args.breakdown:  # 10 more quiet polls of A, timed by function
            qb = Breakdown()
            whole = 0.0
            for _ in range(10):
                t = time.perf_counter()
                run_sync(mailbox_ids["A"], trigger="scheduled")  # the bench's own reference: not wrapped
                whole += time.perf_counter() - t
                db.session.remove()
            qb.close()
            quiet_breakdown = [f"quiet poll breakdown: 10 quiet polls of {args.messages} messages, {whole:.3f} s"]
            quiet_breakdown += [ln.replace("breakdown ", "quiet poll breakdown ") for ln in qb.lines(whole)]
        if args.profile:
            with profiled(args.profiler, args.profile, "quiet-polls"):
                for _ in range(10):
                    run_sync(mailbox_ids["A"], trigger="scheduled")
                    db.session.remove()
        note(f"quiet polls A ms: {sorted(round(p * 1000, 1) for p in polls['A'])}")
        note(f"quiet polls Q ms: {sorted(round(p * 1000, 1) for p in polls['Q'])}")
        quiet_floor_a = statistics.median(quiet_floor["A"]) * 1000
        quiet_floor_q = statistics.median(quiet_floor["Q"]) * 1000
        quiet_first_a = statistics.median(quiet_floor_first["A"]) * 1000
        quiet_first_q = statistics.median(quiet_floor_first["Q"]) * 1000
        runs_total = db.session.scalar(sa.select(sa.func.count()).select_from(SyncRun))
        note(f"{runs_total} sync runs recorded")
        db.session.remove()
        db.engine.dispose()  # nothing held open while the children use the database

    # -- peak RSS of a worker back-filling, in child processes ------------------------------
    rss = {}
    if not args.skip_rss:
        for name in ("R5", "R20"):
            spec = {"config": config, "instance": str(instance), "mailbox_id": mailbox_ids[name],
                    "rss_trace": args.rss_trace}
            result, maxrss_kb = run_child(state, spec)
            if result["status"] != "succeeded" or result["logged"] != len(matched[name]):
                raise RuntimeError(f"child back-fill of {name}: {result}")
            rss[name] = (maxrss_kb, result)
            note(f"child back-fill {name}: {result['seconds']:.2f}s, seen {result['seen']}, "
                 f"logged {result['logged']}, peak RSS {maxrss_kb / 1024:.1f} MB (ru_maxrss by wait4), "
                 f"{result['vmhwm_kb'] / 1024:.1f} MB (VmHWM), launcher "
                 f"{result['launcher_maxrss_kb'] / 1024:.1f} MB")
            if args.rss_trace:
                note(f"  RSS timeline (s, MB): {result['rss_timeline_mb']}")
                note("  stack at the RSS peak:\n    " + "\n    ".join(result["rss_peak_stack"]))

    # -- figures -------------------------------------------------------------------------
    out = []
    out.append(f"database: {backend}")
    out.append(f"messages: {args.messages}")
    out.append(f"customers: {args.customers}")
    out.append(f"customer messages: {len(matched['A'])}")
    out.append(f"header batch: {batch}")
    floor_all = ", ".join(f"{f['seconds']:.3f}" for f in floors)
    out.append(f"floor seconds (all runs): {floor_all}")
    backfill_all = ", ".join(f"{b['seconds']:.3f}" for b in backfills)
    out.append(f"backfill seconds (all runs): {backfill_all}")
    out.append(f"floor seconds: {floor:.3f}")
    out.append(f"backfill seconds: {backfill:.3f}")
    floor_cpu, backfill_cpu = floor_best["cpu"], backfill_best["cpu"]
    out.append("floor cpu seconds (all runs): " + ", ".join(f"{f['cpu']:.3f}" for f in floors))
    out.append("backfill cpu seconds (all runs): " + ", ".join(f"{b['cpu']:.3f}" for b in backfills))
    out.append(f"floor cpu seconds (this process): {floor_cpu:.3f}")
    out.append(f"backfill cpu seconds (this process): {backfill_cpu:.3f}")
    out.append(f"floor gc seconds: {floor_best['gc']:.3f}")
    out.append(f"backfill gc seconds: {backfill_best['gc']:.3f}")
    out.append(f"backfill imap commands: {backfill_run['imap_commands']}")
    out.append(f"backfill bytes fetched: {backfill_run['bytes']}")
    out.append(f"backfill logged: {backfill_run['logged']}")
    out.append(f"quiet poll {args.messages} ms: {quiet_a:.1f}")
    out.append(f"quiet poll 100 ms: {quiet_q:.1f}")
    out.append(f"quiet poll ratio: {quiet_a / quiet_q:.2f}")
    out.append(f"quiet poll floor {args.messages} ms: {quiet_floor_a:.1f}")
    out.append(f"quiet poll floor 100 ms: {quiet_floor_q:.1f}")
    out.append(f"quiet poll floor, STATUS before LIST, {args.messages} ms: {quiet_first_a:.1f}")
    out.append(f"quiet poll floor, STATUS before LIST, 100 ms: {quiet_first_q:.1f}")
    out.append(f"imap commands per quiet poll: {'/'.join(str(c) for c in sorted(commands['A']))}")
    out.append(f"imap commands per quiet poll 100: {'/'.join(str(c) for c in sorted(commands['Q']))}")
    if rss:
        out.append(f"peak rss {args.messages} MB: {rss['R20'][0] / 1024:.1f}")
        out.append(f"peak rss {args.small_rss_messages} MB: {rss['R5'][0] / 1024:.1f}")
        out.append(f"peak rss {args.messages} MB (VmHWM): {rss['R20'][1]['vmhwm_kb'] / 1024:.1f}")
        out.append(f"peak rss {args.small_rss_messages} MB (VmHWM): {rss['R5'][1]['vmhwm_kb'] / 1024:.1f}")
        out.append(f"child backfill {args.messages} seconds (cold Dovecot cache): {rss['R20'][1]['seconds']:.3f}")
        out.append(f"child backfill {args.small_rss_messages} seconds (cold Dovecot cache): "
                   f"{rss['R5'][1]['seconds']:.3f}")
    out.extend(floor_breakdown)
    out.extend(breakdown_lines)
    out.extend(quiet_breakdown)
    if args.profile:
        out.append(f"profiles: {args.profile} (timings above include profiler overhead)")
    out.append(f"machine load average (1 min) at start / end: {load_start:.2f} / {os.getloadavg()[0]:.2f} "
               f"on {os.cpu_count()} CPUs")
    out.append(f"benchmark wall seconds: {time.perf_counter() - wall0:.1f}")
    out.append("backfill/floor ratio per round: " + ", ".join(f"{r:.2f}" for r in ratios))
    out.append(f"backfill/floor ratio, best of each: {backfill / floor:.2f}")
    out.append(f"backfill/floor ratio: {statistics.median(ratios):.2f}")
    print("\n".join(out), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; servers stopped and temp folder removed", file=sys.stderr)
        sys.exit(130)
