#!/usr/bin/env python
"""Fleet benchmark: many mailboxes, real `python worker.py` processes, PostgreSQL, Redis with AOF.

    .venv/bin/python bench/fleet.py                         # 1,000 mailboxes, 2 workers
    .venv/bin/python bench/fleet.py --workers 1
    .venv/bin/python bench/fleet.py --mailboxes 10000
    .venv/bin/python bench/fleet.py --breakdown             # + where a quiet poll's time goes
    .venv/bin/python bench/fleet.py --dovecot-performance   # Dovecot in its high-performance mode

Everything is set up in a temp folder and removed at the end (also on Ctrl-C or an error;
--keep leaves the servers running and prints how to reach them):
- a Dovecot (devservers; its default "high-security" mode, a new login and imap process per
  connection, unless --dovecot-performance), one user per mailbox, each INBOX with
  --messages (20) messages written as Maildir files: the non-customer ones are hard links to
  one set of files, the --customer-messages (2) per mailbox are written anew, each from or
  to a customer of the CRM (unique Message-IDs, so each is logged once);
- redis-server with an append-only file (appendfsync everysec, Redis's own default);
- a fresh PostgreSQL database on 127.0.0.1:5432 (--database-url; created by this script,
  dropped at the end), schema by the migrations;
- one portal user (a rep) per mailbox with an API token (bulk insert), and one customer per
  mailbox created through the app (portal.crm.upsert_customer, as the CRM API does);
- --workers (2) `python worker.py` processes, configured through the environment as an
  operator would (devservers.WorkerProcess); the first runs the scheduler. The scheduler's
  tick is 1 s (EIS_SCHEDULER_TICK_SECONDS in the instance's config.py: the environment
  would give it as a string), so it picks up due mailboxes at once.

Figures:
- linking per second: each mailbox linked through the product's API (POST /api/v1/me/mailboxes
  with the rep's token, in the Flask test client, one at a time), which tries the login,
  stores the mailbox and queues its first sync;
- back-fill mailboxes per second: the workers start after linking; from their start until
  every mailbox's last_success_at is set;
- quiet polls per second: every mailbox made due at once (UPDATE next_sync_at), timed until
  every mailbox's last_success_at has passed that moment; --rounds (3) rounds, the median;
  per worker process = that / --workers. Polls are counted by last_success_at only, so this
  holds whatever the jobs look like (one per mailbox, or several mailboxes per job);
- the IMAP floor: plain IMAPClient (no product code, no database), one process, in a loop
  over the users: connect, LOGIN, STATUS of the folders a quiet poll asks about (INBOX and
  Sent), LIST, LOGOUT; measured with Dovecot in both modes (it is restarted for the other);
- database rows and bytes per mailbox per day of polling: every table's row count and
  pg_total_relation_size before and after each round. The first quiet round after the
  back-fill is a mailbox's first quiet poll of the day; later rounds are the day's other
  polls. A day = first + (P - 1) x later, P = 1440 / ((min + max interval) / 2) polls a day
  (EIS_SYNC_INTERVAL_MIN/MAX_MINUTES: 10 and 30 give 72). A table's bytes per row are what
  one more row costs for good (its rows copied into a fresh table, see bytes_per_row): dead
  row versions that autovacuum reclaims are not growth. The files' raw growth in the rounds
  is printed too, and the growth of tables only updated in place (mailboxes).

With --breakdown, the workers are stopped after the rounds and one instrumented worker
(this file run as `--as-worker`: worker.py's main with timers around RQ's and the
product's functions, no product file touched) does one more quiet round; it prints the ms
per poll of each part: the fork, RQ's bookkeeping, the app context, database connections,
each kind of SQL statement, commits, Redis round trips, and each IMAP command.

Figures go to stdout, one per line; the last line is `quiet polls per second per worker: X`.
Progress goes to stderr with a leading '#'. Timings are wall-clock on a shared 2-core
machine: the load average is printed.
"""
from __future__ import annotations

import argparse
import contextlib
import email.utils
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "fleet-imap-pass"
DOMAIN = "agency.test"
TICK_SECONDS = 1.0
T0 = time.monotonic()


def note(text: str) -> None:
    print(f"# [{time.monotonic() - T0:7.1f}s] {text}", file=sys.stderr, flush=True)


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # the product stores naive UTC


def address_of(i: int) -> str:
    return f"rep{i:05d}@{DOMAIN}"


def customer_address(i: int) -> str:
    return f"customer{i:05d}@client{i % 97:02d}.test"


# ----------------------------------------------------------------------------------------
# Mail: hard-linked filler, customer messages written per mailbox
# ----------------------------------------------------------------------------------------

WORDS = ("quote quarter attached review pricing delivery schedule thursday contract terms invoice "
         "payment order shipment offer meeting agenda notes project update budget approval").split()


def filler_message(rng: random.Random, k: int, when: datetime) -> bytes:
    sender = f"news{k}@vendor{k % 13}.test"
    body = "\r\n".join(" ".join(rng.choices(WORDS, k=12)) for _ in range(rng.randint(10, 40)))
    return ("\r\n".join([
        f"Message-ID: <filler.{k}.{uuid.uuid4().hex[:12]}@vendor.test>",
        f"Date: {email.utils.format_datetime(when)}",
        f"From: Vendor {k} <{sender}>",
        f"To: team@{DOMAIN}",
        f"Subject: {' '.join(rng.choices(WORDS, k=5)).capitalize()}",
        "MIME-Version: 1.0",
        'Content-Type: text/plain; charset="utf-8"',
        "Content-Transfer-Encoding: 7bit",
    ]) + "\r\n\r\n" + body + "\r\n").encode()


def customer_message(rng: random.Random, owner: str, customer: int, when: datetime, tag: str) -> bytes:
    them = f"Customer {customer} <{customer_address(customer)}>"
    from_, to = (them, owner) if rng.random() < 0.5 else (owner, them)
    body = "\r\n".join(" ".join(rng.choices(WORDS, k=12)) for _ in range(rng.randint(5, 30)))
    return ("\r\n".join([
        f"Message-ID: <{tag}.{uuid.uuid4().hex[:16]}@fleet.test>",
        f"Date: {email.utils.format_datetime(when)}",
        f"From: {from_}",
        f"To: {to}",
        f"Subject: Re: {' '.join(rng.choices(WORDS, k=4))}",
        "MIME-Version: 1.0",
        'Content-Type: text/plain; charset="utf-8"',
        "Content-Transfer-Encoding: 7bit",
    ]) + "\r\n\r\n" + body + "\r\n").encode()


class MaildirWriter:
    """Maildir files straight to disk (as devservers.dovecot_mail.write_maildir writes them:
    tmp/ then rename into cur/, owned by Dovecot's mail uid, mtime = INTERNALDATE), with the
    filler files hard-linked from one template folder: 10,000 mailboxes in seconds."""

    def __init__(self, dovecot, rng: random.Random, n_filler: int):
        from devservers import MAIL_GID, MAIL_UID

        self.uid, self.gid = MAIL_UID, MAIL_GID
        self.dovecot, self.rng = dovecot, rng
        self.template = dovecot.root / "fleet-template"
        self.template.mkdir()
        now = utcnow()
        # Filler dated 1-25 days back, customer mail 1-20 days back: all in the 30-day window.
        self.filler = []
        for k in range(n_filler):
            when = now - timedelta(days=25 * (n_filler - k) / max(n_filler, 1), minutes=rng.randint(0, 59))
            self.filler.append((self._write(self.template, f"f{k}", filler_message(rng, k, when), when), when))
        self.seq = 0

    def _name(self, size: int, data: bytes) -> str:
        self.seq += 1
        vsize = size + data.count(b"\n") - data.count(b"\r\n")
        return f"{1_600_000_000 + self.seq}.M{self.seq % 1_000_000}P{os.getpid()}.fleet,S={size},W={vsize}"

    def _write(self, folder: Path, name: str, data: bytes, when: datetime) -> Path:
        ts = when.replace(tzinfo=timezone.utc).timestamp()
        path = folder / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fchown(fd, self.uid, self.gid)
            os.utime(fd, (ts, ts))
        finally:
            os.close(fd)
        return path

    def mailbox(self, address: str, customers: list[int], positions: set[int], n: int, tag: str) -> None:
        home = self.dovecot.home(address)
        maildir = home / "Maildir"
        for d in (maildir, maildir / "cur", maildir / "new", maildir / "tmp"):
            d.mkdir(mode=0o700)
            os.chown(d, self.uid, self.gid)
        cur, tmp = maildir / "cur", maildir / "tmp"
        filler = iter(self.filler)
        now = utcnow()
        c = 0
        for i in range(n):
            if i in positions:
                when = now - timedelta(days=1 + 19 * (n - i) / n, minutes=self.rng.randint(0, 59))
                data = customer_message(self.rng, address, customers[c % len(customers)], when, f"{tag}.{i}")
                c += 1
                name = self._name(len(data), data)
                self._write(tmp, name, data, when)
                os.rename(tmp / name, cur / f"{name}:2,S")
            else:
                src, _when = next(filler)
                size = src.stat().st_size
                os.link(src, cur / f"{self._name(size, b'')}:2,S")


# ----------------------------------------------------------------------------------------
# The database: sizes of every table, bulk users and tokens
# ----------------------------------------------------------------------------------------

def table_snapshot(engine) -> dict[str, tuple[int, int]]:
    """{table: (rows, pg_total_relation_size)} for every table of the public schema."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        tables = [r[0] for r in conn.execute(sa.text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"))]
        out = {}
        for t in tables:
            rows = conn.execute(sa.text(f'SELECT count(*) FROM "{t}"')).scalar()
            size = conn.execute(sa.text("SELECT pg_total_relation_size(CAST(:t AS regclass))"),
                                {"t": f'public."{t}"'}).scalar()
            out[t] = (int(rows), int(size))
    return out


def diff(after: dict, before: dict) -> dict[str, tuple[int, int]]:
    return {t: (after[t][0] - before.get(t, (0, 0))[0], after[t][1] - before.get(t, (0, 0))[1]) for t in after}


def bytes_per_row(engine, tables: list[str]) -> dict[str, float]:
    """What one more row of each table costs on disk for good (heap, TOAST and indexes):
    its rows copied into a fresh table of the same shape (LIKE ... INCLUDING ALL), half of
    them then the rest, and the growth of the second half over its rows. Dead row versions
    (updates, which autovacuum reclaims) and the fixed pages of a small table's indexes are
    not in it."""
    import sqlalchemy as sa

    out = {}
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for t in tables:
            rows = conn.execute(sa.text(f'SELECT count(*) FROM "{t}"')).scalar()
            half = rows // 2
            if rows - half < 1:
                out[t] = 0.0
                continue
            conn.execute(sa.text(f'CREATE TABLE fleet_copy (LIKE "{t}" INCLUDING ALL)'))
            try:
                conn.execute(sa.text(f'INSERT INTO fleet_copy SELECT * FROM "{t}" ORDER BY ctid LIMIT {half}'))
                size = "SELECT pg_total_relation_size('fleet_copy')"
                first = conn.execute(sa.text(size)).scalar()
                conn.execute(sa.text(f'INSERT INTO fleet_copy SELECT * FROM "{t}" ORDER BY ctid OFFSET {half}'))
                out[t] = (conn.execute(sa.text(size)).scalar() - first) / (rows - half)
            finally:
                conn.execute(sa.text("DROP TABLE fleet_copy"))
    return out


def bulk_users(db, n: int) -> list[str]:
    """n reps (one password hash for all: hashing is not what this measures) and an API
    token each; returns the tokens."""
    import hashlib
    import secrets

    from sqlalchemy import insert

    from portal.models import ApiToken, User

    probe = User(email="x@x.test", role="rep")
    probe.set_password("fleet-password")
    now = utcnow()
    db.session.execute(insert(User), [
        {"email": address_of(i), "role": "rep", "name": f"Rep {i}", "password_hash": probe.password_hash}
        for i in range(1, n + 1)])
    ids = dict(db.session.execute(db.select(User.email, User.id)).all())
    tokens = ["eis_" + secrets.token_urlsafe(32) for _ in range(n)]
    db.session.execute(insert(ApiToken), [
        {"user_id": ids[address_of(i)], "token_hash": hashlib.sha256(tokens[i - 1].encode()).hexdigest(),
         "prefix": tokens[i - 1][:12], "expires_at": now + timedelta(days=30)} for i in range(1, n + 1)])
    db.session.commit()
    return tokens


# ----------------------------------------------------------------------------------------
# CPU time of process trees (steadier than wall-clock on a shared machine)
# ----------------------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(roots: list[int]) -> float:
    """CPU seconds used so far by the processes `roots` and everything under them: each
    live process's own time plus the time of its children it has reaped (cutime, cstime),
    so every process that ran in the tree counts once (work horses are reaped by their
    worker, Dovecot's imap processes by its master)."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                text = (entry / "stat").read_text()
                fields = text[text.rindex(")") + 2:].split()
                stats[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
    children: dict[int, list[int]] = {}
    for pid, (ppid, _ticks) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0, [r for r in roots if r in stats], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += stats[pid][1]
        todo.extend(children.get(pid, ()))
    return total / CLOCK_TICKS


# ----------------------------------------------------------------------------------------
# The IMAP floor
# ----------------------------------------------------------------------------------------

QUIET_STATUS = [b"UIDNEXT", b"UIDVALIDITY", b"MESSAGES", b"HIGHESTMODSEQ"]


def imap_floor(host: str, port: int, addresses: list[str], folders: list[str]) -> tuple[float, float]:
    """Polls per second of a plain client doing what a quiet poll needs at least, and the
    client's CPU seconds a poll."""
    from imapclient import IMAPClient

    t0, c0 = time.perf_counter(), time.process_time()
    for address in addresses:
        client = IMAPClient(host, port=port, ssl=False, timeout=30)
        client.login(address, PASSWORD)
        for name in folders:
            client.folder_status(name, QUIET_STATUS)
        client.list_folders()
        client.logout()
    return len(addresses) / (time.perf_counter() - t0), (time.process_time() - c0) / len(addresses)


# ----------------------------------------------------------------------------------------
# Instrumented worker (--as-worker): worker.py's main with timers, for --breakdown
# ----------------------------------------------------------------------------------------

# (label, "module:attribute path", where): "horse" timers run in the work horse, "parent"
# in the worker process. Inclusive wall time; a nested call of the same timer counts once.
# A target that does not exist (the code changed) is skipped and said so.
TIMERS = [
    ("parent: dequeue_job_and_maintain_ttl", "rq.worker.base:BaseWorker.dequeue_job_and_maintain_ttl", "parent", 0),
    ("parent: prepare_execution", "rq.worker.base:BaseWorker.prepare_execution", "parent", 0),
    ("parent: execute_job (fork, wait for the horse, RQ's clean-up)", "rq.worker:Worker.execute_job", "parent", 0),
    ("parent: fork_work_horse (os.fork)", "rq.worker:Worker.fork_work_horse", "parent", 1),
    ("horse: perform_job (the horse but its start and exit)", "rq.worker.base:BaseWorker.perform_job", "horse", 1),
    ("horse: RQ prepare_job_execution", "rq.worker.base:BaseWorker.prepare_job_execution", "horse", 2),
    ("horse: job.perform (the job function)", "rq.job:Job.perform", "horse", 2),
    ("horse: jobs.context._after_fork (engine dispose)", "portal.jobs.context:_after_fork", "horse", 3),
    ("horse: sync.run_sync (as the job calls it)", "portal.jobs.sync:run_sync", "horse", 3),
    ("horse: sync.open_imap (connect, LOGIN)", "portal.sync:open_imap", "horse", 4),
    ("horse: ImapSession.__init__ (TCP connect, greeting)", "portal.mail.imap:ImapSession.__init__", "horse", 5),
    ("horse: crypto.decrypt (the password)", "portal.crypto:decrypt", "horse", 5),
    ("horse: ImapSession.login_password (LOGIN)", "portal.mail.imap:ImapSession.login_password", "horse", 5),
    ("horse: MailboxSync.__init__ (internal and own addresses)", "portal.sync:MailboxSync.__init__", "horse", 4),
    ("horse: MailboxSync.sync", "portal.sync:MailboxSync.sync", "horse", 4),
    ("horse: ImapSession.capabilities", "portal.mail.imap:ImapSession.capabilities", "horse", 5),
    ("horse: ImapSession.status (STATUS)", "portal.mail.imap:ImapSession.status", "horse", 5),
    ("horse: ImapSession.list_folders (LIST)", "portal.mail.imap:ImapSession.list_folders", "horse", 5),
    ("horse: sync._finish_success", "portal.sync:_finish_success", "horse", 4),
    ("horse: sync._interval (runs of the last day)", "portal.sync:_interval", "horse", 5),
    ("horse: ImapSession.close (LOGOUT)", "portal.mail.imap:ImapSession.close", "horse", 4),
    ("horse: sync.release_lock_of_run", "portal.sync:release_lock_of_run", "horse", 4),
    ("horse: RQ _finalize_success (result, registries)", "rq.worker.base:BaseWorker._finalize_success", "horse", 2),
    # Across the above:
    ("horse: new database connection (connect, dialect set-up)",
     "sqlalchemy.pool.base:_ConnectionRecord._ConnectionRecord__connect", "horse", 1),
    ("horse: Session.commit (flush + COMMIT)", "sqlalchemy.orm.session:Session.commit", "horse", 1),
    ("horse: SQL compilation (SQLCompiler, cached per process)", "sqlalchemy.sql.compiler:SQLCompiler.__init__",
     "horse", 1),
    ("horse: Redis round trips (commands)", "redis.client:Redis.execute_command", "horse", 1),
    ("horse: Redis round trips (pipelines)", "redis.client:Pipeline.execute", "horse", 1),
]
SQL_LABEL = re.compile(r"^\s*(SELECT|INSERT INTO|UPDATE|DELETE FROM|SET)\b(?:.*?\bFROM\b)?\s*\"?(\w+)?",
                       re.IGNORECASE | re.DOTALL)


class Timers:
    def __init__(self):
        self.totals: dict[str, list] = {}
        self.skipped: list[str] = []

    def install(self) -> None:
        import functools
        import importlib

        for label, target, _side, _depth in TIMERS:
            module_name, path = target.split(":")
            try:
                owner = importlib.import_module(module_name)
                *parents, attr = path.split(".")
                for name in parents:
                    owner = getattr(owner, name)
                original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
            except (ImportError, AttributeError, KeyError):
                self.skipped.append(label)
                continue
            totals = self.totals.setdefault(label, [0, 0.0, 0])

            def make(func, totals=totals):
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

            setattr(owner, attr, make(original))
        self._sql_timer()

    def _sql_timer(self) -> None:
        """Every SQL statement's time, by its kind and table (cursor execute to result)."""
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        starts: list[float] = []

        @event.listens_for(Engine, "before_cursor_execute")
        def before(conn, cursor, statement, parameters, context, executemany):
            starts.append(time.perf_counter())

        @event.listens_for(Engine, "after_cursor_execute")
        def after(conn, cursor, statement, parameters, context, executemany):
            seconds = time.perf_counter() - starts.pop()
            m = SQL_LABEL.match(statement)
            label = f"horse: SQL {m.group(1).upper()} {m.group(2) or ''}".rstrip() if m else "horse: SQL other"
            totals = self.totals.setdefault(label, [0, 0.0, 0])
            totals[0] += 1
            totals[1] += seconds

        # The COMMIT round trip, timed at the DBAPI call.
        from sqlalchemy.engine import default

        original = default.DefaultDialect.do_commit

        def do_commit(dialect, dbapi_connection):
            t = time.perf_counter()
            try:
                return original(dialect, dbapi_connection)
            finally:
                totals = self.totals.setdefault("horse: SQL COMMIT (round trip)", [0, 0.0, 0])
                totals[0] += 1
                totals[1] += time.perf_counter() - t

        default.DefaultDialect.do_commit = do_commit


def as_worker(argv: list[str]) -> int:
    """worker.py's main, with timers (--breakdown). Each work horse appends its timers to
    $EIS_FLEET_TIMINGS when its job ends; the worker appends its own when it stops."""
    sys.path.insert(0, str(ROOT))
    import rq.worker.base as rq_base
    import worker as worker_module

    out = Path(os.environ["EIS_FLEET_TIMINGS"])
    timers = Timers()
    timers.install()
    fork_at = [0.0]
    worker_pid = os.getpid()  # a job performed in this process (no fork) has no horse start
    from rq.worker import Worker

    original_fork = Worker.fork_work_horse
    original_perform = rq_base.BaseWorker.perform_job

    def fork_work_horse(self, job, queue):
        fork_at[0] = time.perf_counter()  # the child reads it: how long its start took
        return original_fork(self, job, queue)

    def perform_job(self, job, queue, execution):
        start = time.perf_counter()
        for label, v in timers.totals.items():  # the horse's timers begin at zero
            if not label.startswith("parent"):
                v[0], v[1] = 0, 0.0
        try:
            return original_perform(self, job, queue, execution)
        finally:
            end = time.perf_counter()
            horse = {k: v[:2] for k, v in timers.totals.items() if not k.startswith("parent")}
            with open(out, "a") as f:
                forked = os.getpid() != worker_pid
                f.write(json.dumps({"kind": "horse", "fork_to_perform": start - fork_at[0] if forked else 0.0,
                                    "perform": end - start, "end": end, "totals": horse}) + "\n")

    Worker.fork_work_horse = fork_work_horse
    rq_base.BaseWorker.perform_job = perform_job
    try:
        return worker_module.main(argv)
    finally:
        parent = {k: v[:2] for k, v in timers.totals.items() if k.startswith("parent")}
        with open(out, "a") as f:
            f.write(json.dumps({"kind": "parent", "totals": parent, "skipped": timers.skipped}) + "\n")


def breakdown_lines(path: Path, polls: int, seconds: float) -> list[str]:
    horses, parent, skipped = [], {}, []
    for line in path.read_text().splitlines():
        item = json.loads(line)
        if item["kind"] == "horse":
            horses.append(item)
        else:
            parent, skipped = item["totals"], item.get("skipped", [])
    if not horses:
        return ["breakdown: no jobs recorded"]
    n = len(horses)
    totals: dict[str, list] = {}
    for h in horses:
        for k, (calls, secs) in h["totals"].items():
            t = totals.setdefault(k, [0, 0.0])
            t[0] += calls
            t[1] += secs
    per_poll = 1000.0 / polls
    out = [f"breakdown: {polls} quiet polls in {n} jobs by one instrumented worker, {seconds:.1f} s, "
           f"{1000 * seconds / polls:.1f} ms a poll wall-clock (timers add ~0.1 ms)"]
    out.append(f"breakdown   horse start (from fork to perform_job): "
               f"{per_poll * sum(h['fork_to_perform'] for h in horses):.2f} ms a poll")
    rows = [(label, depth) for label, _t, _s, depth in TIMERS]
    timed = {label for label, *_ in TIMERS}
    rows += [(k, 2) for k in sorted(k for k in totals if k.startswith("horse: SQL") and k not in timed)]
    for label, depth in rows:
        calls, secs = (parent if label.startswith("parent") else totals).get(label, (0, 0.0))
        if calls:
            out.append(f"breakdown   {'  ' * depth}{label}: {per_poll * secs:.2f} ms a poll, "
                       f"{calls / polls:.2f} calls")
    if skipped:
        out.append("breakdown   (not in this code: " + "; ".join(skipped) + ")")
    return out


# ----------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mailboxes", type=int, default=1000, help="mailboxes (default 1000)")
    p.add_argument("--workers", type=int, default=2, help="worker.py processes (default 2)")
    p.add_argument("--messages", type=int, default=20, help="messages per mailbox (default 20)")
    p.add_argument("--customer-messages", type=int, default=2,
                   help="of those, messages from or to a customer (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="quiet-poll rounds (default 3; at least 2)")
    p.add_argument("--floor-users", type=int, default=1000,
                   help="users the IMAP floor loops over (default 1000, at most --mailboxes)")
    p.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/",
                   help="PostgreSQL server; a database named in the URL is created and dropped "
                        "(it must not exist); default eis_fleet_<pid>")
    p.add_argument("--dovecot-performance", action="store_true",
                   help="run Dovecot in its high-performance mode for the whole run "
                        "(the floor is measured in both modes either way)")
    p.add_argument("--breakdown", action="store_true",
                   help="after the rounds, one instrumented worker does one more quiet round: "
                        "ms per poll of each part of the job path")
    p.add_argument("--keep", action="store_true", help="leave the servers and the database for inspection")
    p.add_argument("--seed", type=int, default=20261207)
    p.add_argument("--as-worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds < 2:
        p.error("--rounds must be at least 2 (the first quiet poll of a day and the others)")
    if not 1 <= args.customer_messages <= args.messages:
        p.error("--customer-messages must be from 1 to --messages")
    return args


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--as-worker":
        return as_worker(sys.argv[2:])
    args = parse_args(argv)

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started: dict = {"workers": []}
    tmp = Path(tempfile.mkdtemp(prefix="eis-fleet-"))
    try:
        return run(args, tmp, started)
    finally:
        if args.keep:
            keep_note(started, tmp)
        else:
            cleanup(started, tmp)


def keep_note(started: dict, tmp: Path) -> None:
    for w in started["workers"]:
        with contextlib.suppress(Exception):
            w.stop()
    dovecot, redis_server, pg = started.get("dovecot"), started.get("redis"), started.get("pg")
    note(f"--keep: temp folder {tmp} (when done: kill the two pids below, drop the database, remove it)")
    if dovecot:
        note(f"  dovecot pid {dovecot.pid}, IMAP 127.0.0.1:{dovecot.imap_port}, config {dovecot.conf_path}, "
             f"users {address_of(1)}.. password {PASSWORD}")
    if redis_server:
        note(f"  redis pid {redis_server._proc and redis_server._proc.pid}, {redis_server.url}")
    if pg:
        note(f"  database {pg[1]} (drop it: psql -h 127.0.0.1 -U postgres -c 'DROP DATABASE {pg[1]}')")
    # The atexit handler of devservers stops what is registered as running: keep them.
    from devservers.process import _running

    for server in (dovecot, redis_server):
        if server is not None:
            _running.discard(server)


def cleanup(started: dict, tmp: Path) -> None:
    t = time.perf_counter()
    for w in started["workers"]:
        with contextlib.suppress(Exception):
            w.stop()
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
            with contextlib.suppress(Exception):
                server.close()
    pg = started.get("pg")
    if pg is not None:
        admin, dbname = pg
        with contextlib.suppress(Exception):
            import sqlalchemy as sa

            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
            admin.dispose()
            note(f"dropped PostgreSQL database {dbname}")
    shutil.rmtree(tmp, ignore_errors=True)
    note(f"cleaned up in {time.perf_counter() - t:.1f}s")


class InstrumentedWorker:
    """This file as `--as-worker`: worker.py's main with timers, in its own process."""

    def __init__(self, env: dict, timings: Path, name: str):
        self.env = dict(env, EIS_FLEET_TIMINGS=str(timings))
        self.name, self.timings = name, timings
        self.log_path = timings.with_suffix(".log")
        self._proc = None

    def start(self, redis_url: str, timeout: float = 60) -> "InstrumentedWorker":
        import redis

        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--as-worker", "--name", self.name],
                env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                cwd=str(ROOT))
        conn = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + timeout
        while not conn.sismember("rq:workers", f"rq:worker:{self.name}"):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"instrumented worker did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        from devservers.process import _stop_process

        proc, self._proc = self._proc, None
        _stop_process(proc, grace=15.0)


def start_workers(config: dict, extra: dict, count: int, started: dict, *, first_scheduler: bool = True) -> list:
    """Start `count` worker.py processes at once (the first with the scheduler)."""
    from devservers import WorkerProcess

    workers = [WorkerProcess(config, extra, scheduler=first_scheduler and i == 0) for i in range(count)]
    started["workers"].extend(workers)
    errors = []

    def go(w):
        try:
            w.start(timeout=60)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return workers


def stop_workers(started: dict) -> None:
    for w in started["workers"]:
        w.stop()
    started["workers"].clear()


def wait_until(db, predicate_sql: str, params: dict, want: int, what: str, workers: list,
               stall_seconds: float = 90) -> float:
    """Poll the database until `predicate_sql` counts `want` mailboxes; the moment it did.
    Fails when nothing moved for `stall_seconds` (with the workers' log tails)."""
    import sqlalchemy as sa

    last, last_change = -1, time.monotonic()
    while True:
        with db.engine.connect() as conn:
            done = conn.execute(sa.text(predicate_sql), params).scalar()
        now = time.monotonic()
        if done >= want:
            return time.perf_counter()
        if done != last:
            last, last_change = done, now
        elif now - last_change > stall_seconds:
            tails = "\n".join(w.log_tail(20) for w in workers if hasattr(w, "log_tail"))
            raise RuntimeError(f"{what}: stuck at {done}/{want} for {stall_seconds:.0f} s\n{tails}")
        time.sleep(0.25)


def quiet_round(db, n: int, workers: list, label: str) -> tuple[float, datetime]:
    """Make every active mailbox due now; seconds until every last_success_at passed it."""
    import sqlalchemy as sa

    with db.engine.begin() as conn:
        mark = conn.execute(sa.text("SELECT (now() AT TIME ZONE 'utc')")).scalar()
        conn.execute(sa.text("UPDATE mailboxes SET next_sync_at = :m WHERE state = 'active'"),
                     {"m": mark - timedelta(seconds=1)})
    t0 = time.perf_counter()
    t1 = wait_until(db, "SELECT count(*) FROM mailboxes WHERE last_success_at >= :m", {"m": mark}, n, label, workers)
    return t1 - t0, mark


def run(args, tmp: Path, started: dict) -> int:
    import sqlalchemy as sa
    from cryptography.fernet import Fernet

    from devservers import Dovecot, RedisServer, environment_of

    rng = random.Random(args.seed)
    n = args.mailboxes
    wall0 = time.perf_counter()
    load_start = os.getloadavg()[0]
    instance = tmp / "instance"
    instance.mkdir()
    # Read by the bench's app and by every worker (EIS_INSTANCE_PATH below). A float here:
    # from the environment the tick would arrive as a string (it has no default in settings).
    (instance / "config.py").write_text(f"EIS_SCHEDULER_TICK_SECONDS = {TICK_SECONDS}\n")

    # -- servers -----------------------------------------------------------------------
    redis_server = RedisServer(root=tmp / "redis", appendonly=True)
    started["redis"] = redis_server
    redis_server.start()
    dovecot = Dovecot(root=tmp / "dovecot", performance=args.dovecot_performance)
    started["dovecot"] = dovecot
    dovecot.start()
    note(f"redis (AOF) on {redis_server.port}, dovecot on {dovecot.imap_port} "
         f"({'high-performance' if args.dovecot_performance else 'default high-security'} mode)")

    parts = urlsplit(args.database_url)
    dbname = parts.path.lstrip("/") or f"eis_fleet_{os.getpid()}"
    if not re.fullmatch(r"[A-Za-z0-9_]+", dbname):
        raise SystemExit(f"database name {dbname!r}: use letters, digits and _ only")
    admin = sa.create_engine(parts._replace(path="/postgres").geturl(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": dbname}).first():
            admin.dispose()
            raise SystemExit(f"database {dbname} exists already: this script drops only what it creates")
        conn.execute(sa.text(f'CREATE DATABASE "{dbname}"'))
    started["pg"] = (admin, dbname)
    database_url = parts._replace(path="/" + dbname).geturl()

    config = {
        "SECRET_KEY": "fleet-" + uuid.uuid4().hex,
        "SQLALCHEMY_DATABASE_URI": database_url,
        "REDIS_URL": redis_server.url,
        "EIS_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "EIS_PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000",
        "EIS_MAIL_HOSTS_ALLOW": "127.0.0.1",  # the bench's Dovecot is on loopback
    }
    os.environ["EIS_INSTANCE_PATH"] = str(instance)
    from portal import create_app

    app = create_app({**config, "WTF_CSRF_ENABLED": False})
    started["app"] = app
    worker_env = {"EIS_INSTANCE_PATH": str(instance)}

    from flask_migrate import upgrade

    from portal import crm
    from portal.extensions import db

    with app.app_context():
        upgrade()
        t = time.perf_counter()
        tokens = bulk_users(db, n)
        note(f"{n} reps with API tokens in {time.perf_counter() - t:.1f}s")
        t = time.perf_counter()
        for i in range(1, n + 1):
            crm.upsert_customer(f"C-{i:05d}", name=f"Customer {i}", primary_email=customer_address(i))
            if i % 500 == 0:
                db.session.commit()
        db.session.commit()
        note(f"{n} customers through portal.crm in {time.perf_counter() - t:.1f}s")
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
        interval_min = app.config["EIS_SYNC_INTERVAL_MIN_MINUTES"]
        interval_max = app.config["EIS_SYNC_INTERVAL_MAX_MINUTES"]

    # -- mail --------------------------------------------------------------------------
    t = time.perf_counter()
    for i in range(1, n + 1):
        dovecot.add_user(address_of(i), PASSWORD)
    note(f"{n} Dovecot users in {time.perf_counter() - t:.1f}s")
    t = time.perf_counter()
    writer = MaildirWriter(dovecot, rng, args.messages - args.customer_messages)
    expected_logged = 0
    for i in range(1, n + 1):
        positions = set(rng.sample(range(args.messages), args.customer_messages))
        customers = [1 + (i - 1 + k * 7919) % n for k in range(args.customer_messages)]
        writer.mailbox(address_of(i), customers, positions, args.messages, f"m{i}")
        expected_logged += args.customer_messages
    note(f"{n} x {args.messages} messages written in {time.perf_counter() - t:.1f}s")

    # -- linking through the API -------------------------------------------------------
    # Outside an app context: each request gets its own, and its own database session.
    client = app.test_client()
    t = time.perf_counter()
    for i in range(1, n + 1):
        r = client.post("/api/v1/me/mailboxes", headers={"Authorization": f"Bearer {tokens[i - 1]}"},
                        json={"address": address_of(i), "password": PASSWORD, "imap_host": dovecot.host,
                              "imap_port": dovecot.imap_port, "imap_security": "none"})
        if r.status_code != 201:
            raise RuntimeError(f"linking {address_of(i)}: {r.status_code} {r.get_data(as_text=True)}")
        if i % 1000 == 0:
            note(f"linked {i}")
    linking_seconds = time.perf_counter() - t
    note(f"{n} mailboxes linked in {linking_seconds:.1f}s")

    # -- back-fill by the workers ------------------------------------------------------
    t0 = time.perf_counter()
    dovecot_cpu0 = tree_cpu_seconds([dovecot.pid])
    workers = start_workers(config, worker_env, args.workers, started)
    note(f"{args.workers} workers up in {time.perf_counter() - t0:.1f}s")
    with app.app_context():
        t1 = wait_until(db, "SELECT count(*) FROM mailboxes WHERE last_success_at IS NOT NULL", {}, n,
                        "back-fill", workers, stall_seconds=120)
        backfill_seconds = t1 - t0
        backfill_cpu = tree_cpu_seconds([w._proc.pid for w in workers]) / n
        backfill_dovecot_cpu = (tree_cpu_seconds([dovecot.pid]) - dovecot_cpu0) / n
        with db.engine.connect() as conn:
            logged = conn.execute(sa.text("SELECT count(*) FROM emails")).scalar()
            failed = conn.execute(sa.text("SELECT count(*) FROM mailboxes WHERE state <> 'active'")).scalar()
        note(f"back-fill of {n} mailboxes in {backfill_seconds:.1f}s; {logged} emails logged "
             f"(expected {expected_logged}); {failed} mailboxes not active")
        if logged != expected_logged or failed:
            raise RuntimeError("the back-fill did not log what the mail holds: see the workers' logs\n"
                               + "\n".join(w.log_tail(20) for w in workers))
        time.sleep(2)  # the last jobs' RQ bookkeeping

        # -- quiet rounds -----------------------------------------------------------------
        rounds, growth, worker_cpu, dovecot_cpu, loads = [], [], [], [], []
        worker_pids = [w._proc.pid for w in workers]
        for r in range(args.rounds):
            before = table_snapshot(db.engine)
            cpu0 = tree_cpu_seconds(worker_pids), tree_cpu_seconds([dovecot.pid])
            seconds, _mark = quiet_round(db, n, workers, f"quiet round {r + 1}")
            cpu1 = tree_cpu_seconds(worker_pids), tree_cpu_seconds([dovecot.pid])
            loads.append(os.getloadavg()[0])
            time.sleep(1.5)  # the last jobs end (their rows are counted)
            after = table_snapshot(db.engine)
            rounds.append(n / seconds)
            worker_cpu.append((cpu1[0] - cpu0[0]) / n)
            dovecot_cpu.append((cpu1[1] - cpu0[1]) / n)
            growth.append(diff(after, before))
            note(f"quiet round {r + 1}: {n} polls in {seconds:.1f}s = {n / seconds:.1f}/s; worker CPU "
                 f"{1000 * worker_cpu[-1]:.1f} ms a poll, Dovecot {1000 * dovecot_cpu[-1]:.1f} ms; load "
                 f"{loads[-1]:.1f}; rows +{sum(g[0] for g in growth[-1].values())}, "
                 f"bytes +{sum(g[1] for g in growth[-1].values())}")
        with db.engine.connect() as conn:
            logged_after = conn.execute(sa.text("SELECT count(*) FROM emails")).scalar()
        if logged_after != logged:
            raise RuntimeError(f"quiet polls logged {logged_after - logged} emails: they were not quiet")

        # -- where a quiet poll's time goes -----------------------------------------------
        breakdown: list[str] = []
        if args.breakdown:
            stop_workers(started)
            # The stopped scheduler's leader lease would hold the new one off for up to a minute.
            for key in redis_server.client().scan_iter("eis:scheduler:*"):
                redis_server.client().delete(key)
            timings = tmp / "timings.jsonl"
            iw = InstrumentedWorker(environment_of(config, worker_env), timings, f"fleet-instrumented-{os.getpid()}")
            started["workers"].append(iw)
            iw.start(redis_server.url)
            time.sleep(1)
            cpu0 = tree_cpu_seconds([iw._proc.pid])
            seconds, _ = quiet_round(db, n, [], "instrumented round")
            cpu = (tree_cpu_seconds([iw._proc.pid]) - cpu0) / n
            time.sleep(1.5)
            iw.stop()
            started["workers"].remove(iw)
            breakdown = breakdown_lines(timings, n, seconds)
            breakdown.insert(1, f"breakdown   worker cpu (with its scheduler): {1000 * cpu:.1f} ms a poll")
            note(f"instrumented round: {n / seconds:.1f} polls/s, worker CPU {1000 * cpu:.1f} ms a poll")

        # -- bytes per row, for good ------------------------------------------------------------
        tables = sorted({t for g in growth for t, (rows, _b) in g.items() if rows})
        packed = bytes_per_row(db.engine, tables)

    # -- the IMAP floor, in both Dovecot modes -------------------------------------------
    stop_workers(started)
    floor_users = [address_of(i) for i in range(1, min(args.floor_users, n) + 1)]
    with app.app_context():
        folders = [r[0] for r in db.session.execute(sa.text(
            "SELECT DISTINCT name FROM folder_checkpoints ORDER BY name"))]
        db.session.remove()
    floors = {}
    for performance in (args.dovecot_performance, not args.dovecot_performance):
        if dovecot.performance != performance:
            dovecot.performance = performance
            dovecot.restart()
        imap_floor(dovecot.host, dovecot.imap_port, floor_users[:50], folders)  # warm-up
        runs = []
        for _ in range(3):
            d0 = tree_cpu_seconds([dovecot.pid])
            rate, client_cpu = imap_floor(dovecot.host, dovecot.imap_port, floor_users, folders)
            runs.append((rate, client_cpu, (tree_cpu_seconds([dovecot.pid]) - d0) / len(floor_users)))
        floors[performance] = sorted(runs)[1]  # the median run by rate
        note(f"IMAP floor, {'high-performance' if performance else 'default'} Dovecot: "
             f"{', '.join(f'{r[0]:.1f}' for r in runs)} polls/s")

    # -- figures -------------------------------------------------------------------------
    polls_per_day = 1440 / ((interval_min + interval_max) / 2)
    first, later = growth[0], growth[1:]

    def per_day(table: str) -> tuple[float, float]:
        rows_first = first.get(table, (0, 0))[0] / n
        rows_later = statistics.mean(g.get(table, (0, 0))[0] for g in later) / n
        raw_first = first.get(table, (0, 0))[1] / n
        raw_later = statistics.mean(g.get(table, (0, 0))[1] for g in later) / n
        rows = rows_first + rows_later * (polls_per_day - 1)
        raw = raw_first + raw_later * (polls_per_day - 1)
        return rows, raw

    quiet = statistics.median(rounds)
    out = []
    out.append(f"mailboxes: {n}")
    out.append(f"workers: {args.workers}")
    out.append(f"messages per mailbox: {args.messages} ({args.customer_messages} with customers)")
    out.append(f"dovecot: {'high-performance' if args.dovecot_performance else 'default (high-security)'} mode")
    out.append(f"linking per second: {n / linking_seconds:.1f}")
    out.append(f"back-fill mailboxes per second: {n / backfill_seconds:.1f}")
    out.append(f"back-fill cpu ms per mailbox: workers {1000 * backfill_cpu:.0f}, "
               f"dovecot {1000 * backfill_dovecot_cpu:.0f}")
    out.append("quiet polls per second, each round: " + ", ".join(f"{r:.1f}" for r in rounds)
               + " (load average " + ", ".join(f"{x:.1f}" for x in loads) + ")")
    out.append(f"quiet polls per second: {quiet:.1f} ({1000 * args.workers / quiet:.1f} ms a poll per worker)")
    out.append(f"quiet poll cpu ms: workers {1000 * statistics.median(worker_cpu):.1f} "
               f"(each round {', '.join(f'{1000 * c:.1f}' for c in worker_cpu)}), "
               f"dovecot {1000 * statistics.median(dovecot_cpu):.1f}")
    for mode, label in ((False, "default Dovecot"), (True, "high-performance Dovecot")):
        rate, client_cpu, server_cpu = floors[mode]
        out.append(f"imap floor polls per second, {label}: {rate:.1f} ({1000 / rate:.1f} ms: LOGIN, STATUS "
                   f"{' + '.join(folders)}, LIST, LOGOUT; cpu ms: client {1000 * client_cpu:.1f}, "
                   f"dovecot {1000 * server_cpu:.1f})")
    out.append(f"polls per mailbox per day: {polls_per_day:.0f} (interval {interval_min}-{interval_max} min, "
               f"average {(interval_min + interval_max) / 2:g})")
    total_rows = total_bytes = total_raw = 0.0
    for table in tables:
        rows, raw = per_day(table)
        packed_bytes = rows * packed[table]
        total_rows += rows
        total_bytes += packed_bytes
        total_raw += raw
        out.append(f"db per mailbox per day, {table}: {rows:.1f} rows, {packed_bytes / 1024:.1f} KiB "
                   f"({packed[table]:.0f} bytes a row; file growth {raw / 1024:.1f} KiB)")
    bloat = {t: statistics.mean(g.get(t, (0, 0))[1] for g in later) for t in first if t not in tables}
    bloat = {t: b for t, b in bloat.items() if b > 0}
    if bloat:
        out.append("db file growth per round of tables updated in place (autovacuum reclaims it): "
                   + ", ".join(f"{t} {b / 1024:.0f} KiB" for t, b in sorted(bloat.items())))
    out.append(f"db rows per mailbox per day: {total_rows:.1f}")
    out.append(f"db bytes per mailbox per day: {total_bytes:.0f} ({total_bytes / 1024:.1f} KiB; "
               f"file growth in the rounds {total_raw / 1024:.1f} KiB)")
    out.append(f"db per day at {n} mailboxes: {total_rows * n:,.0f} rows, {total_bytes * n / 2**20:.1f} MiB")
    out.extend(breakdown)
    out.append(f"machine load average (1 min) at start / end: {load_start:.2f} / {os.getloadavg()[0]:.2f} "
               f"on {os.cpu_count()} CPUs")
    out.append(f"benchmark wall seconds: {time.perf_counter() - wall0:.0f}")
    out.append(f"quiet polls per second per worker: {quiet / args.workers:.1f}")
    print("\n".join(out), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; servers stopped, database dropped, temp folder removed", file=sys.stderr)
        sys.exit(130)
