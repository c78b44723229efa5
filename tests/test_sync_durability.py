"""Durability of the sync: a worker killed at any moment, and mail that breaks every rule.

"A worker killed (SIGKILL) at random points during a back-fill of a few thousand
messages, then run again: the result equals the result of an undisturbed run, in every
trial." And the whole MIME corpus syncs; a message that cannot be stored is recorded on
the run and skipped, and never stops it.

The kill test runs the real worker (`python worker.py --burst`, RQ forking a work-horse)
on the test's database and Redis. The kill moments come from a seeded random generator:
the seed is printed, and EIS_DURABILITY_SEED=<seed> replays a failure (with the same
EIS_DURABILITY_TRIALS, default 3).
"""
from __future__ import annotations

import email.utils
import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

from rq.defaults import DEFAULT_JOB_MONITORING_INTERVAL
from rq.job import JobStatus
from sqlalchemy import delete, func, select

from devservers.worker import children_of
from portal import crm
from portal.addresses import normalise_address
from portal.extensions import db
from portal.jobs.schedule import recover_stale_runs
from portal.mail.parse import dedupe_key, parse_headers
from portal.models import (
    Activity, Customer, Deal, Email, EmailSource, FolderCheckpoint, Mailbox, MailboxStateChange,
    SyncRun,
)
from portal.queue import enqueue_sync, get_queue, get_redis
from portal.sync import LOCK_TTL_SECONDS, lock_key
from tests import corpus

ROOT = Path(__file__).resolve().parents[1]


# -- the back-filled mailbox ---------------------------------------------------------------
INBOX_SIZE = 3000
SENT_SIZE = 300
CUSTOMERS = 50
DEALS = 10  # deal D-d: primary customer C-d, additional customer C-(d+25)
TRIALS = int(os.environ.get("EIS_DURABILITY_TRIALS") or 3)  # more for a soak run


def _customer_address(i: int) -> str:
    return f"c{i:02d}@client.test"


def _raw(*, from_: str, to: list[str], cc: list[str] = (), subject: str,
         message_id: str | None, when: datetime, body: str) -> bytes:
    """A small RFC 5322 message, built by hand: thousands of them in a blink."""
    lines = [f"From: {from_}", f"To: {', '.join(to)}"]
    if cc:
        lines.append(f"Cc: {', '.join(cc)}")
    lines += [f"Subject: {subject}", f"Date: {email.utils.format_datetime(when)}"]
    if message_id:
        lines.append(f"Message-ID: {message_id}")
    lines += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", "", body, ""]
    return "\r\n".join(lines).encode()


class Backfill:
    """3,000 messages in INBOX and 300 in Sent, ~10% of them customer mail, each with what
    the rules must make of it: (folder, uid, raw, flags, when, matches), a match being
    (customer number, field, direction, deal number or None)."""

    def __init__(self, me: str):
        self.me = me
        self.now = datetime.now().astimezone()
        self.rng = random.Random(20240611)  # the mailbox is always the same; the kills are not
        self.messages: dict[str, list[tuple]] = {"INBOX": [], "Sent": []}
        for i in range(INBOX_SIZE):
            self.messages["INBOX"].append(self._inbox(i))
        for k in range(SENT_SIZE):
            self.messages["Sent"].append(self._sent(k))

    def _when(self, days_ago: float) -> datetime:
        return (self.now - timedelta(days=days_ago)).replace(microsecond=0)

    def _inbox(self, i: int) -> tuple:
        me = self.me
        when = self._when(self.rng.uniform(0.1, 25))
        flags = "S" if i % 3 else ""
        message_id = None if i % 17 == 0 else f"<inbox-{i}@mail.test>"
        logged = True
        if i % 101 == 50:
            when = self._when(45)  # before the window: SEARCH SINCE never returns it
            logged = False
        if i % 97 == 3:
            flags += "D"  # a draft outside Drafts: never logged
            logged = False
        subject, body = f"Message {i}", f"Body of message {i}\r\nLine {self.rng.random()}"
        stranger = f"s{i}@elsewhere.test"
        common = {"subject": subject, "message_id": message_id, "when": when, "body": body}
        if i % 10:
            return ("INBOX", i + 1, _raw(from_=stranger, to=[me], **common), flags, when, [])
        j = i // 10
        c = j % CUSTOMERS
        variant = j % 5
        if variant == 0:  # the customer writes
            raw = _raw(from_=f"Client {c} <{_customer_address(c)}>", to=[me], **common)
            matches = [(c, "from", "in", None)]
        elif variant == 1:  # a copy of our own email to the customer, filed in INBOX
            raw = _raw(from_=me, to=[_customer_address(c)], **common)
            matches = [(c, "to", "out", None)]
        elif variant == 2:  # someone else writes, the customer in copy
            raw = _raw(from_=stranger, to=[me], cc=[_customer_address(c)], **common)
            matches = [(c, "cc", "in", None)]
        elif variant == 3:  # a deal's primary customer writes, its additional customer in copy
            d = j % DEALS
            raw = _raw(from_=_customer_address(d), to=[me], cc=[_customer_address(d + 25)],
                       **common)
            matches = [(d, "from", "in", None), (d + 25, "cc", "in", d)]
        else:  # two customers of no common deal: one writes, the other is in To
            other = (c + 1) % CUSTOMERS
            raw = _raw(from_=_customer_address(c), to=[me, _customer_address(other)], **common)
            matches = [(c, "from", "in", None), (other, "to", "in", None)]
        return ("INBOX", i + 1, raw, flags, when, matches if logged else [])

    def _sent(self, k: int) -> tuple:
        if k % 3 == 0:
            # The same message in INBOX and Sent, one Received line more: the same
            # Message-ID or, without one, the same content. Stored once, seen twice.
            _folder, _uid, raw, flags, when, matches = self.messages["INBOX"][10 * k]
            received = f"Received: from copy by agency.test; {email.utils.format_datetime(when)}"
            return ("Sent", k + 1, received.encode() + b"\r\n" + raw, flags, when, matches)
        when = self._when(self.rng.uniform(0.1, 25))
        message_id = None if k % 13 == 0 else f"<sent-{k}@mail.test>"
        c = k % CUSTOMERS
        to = _customer_address(c) if k % 4 == 0 else f"p{k}@elsewhere.test"
        raw = _raw(from_=self.me, to=[to], subject=f"Sent {k}", message_id=message_id, when=when,
                   body=f"Sent body {k} {self.rng.random()}")
        return ("Sent", k + 1, raw, "S", when, [(c, "to", "out", None)] if k % 4 == 0 else [])

    def write(self, dovecot) -> None:
        for folder, messages in self.messages.items():
            dovecot.write_maildir(self.me, folder, [(m[2], m[3], m[4]) for m in messages])

    def expected(self) -> dict:
        """The canonical result the rules call for, worked out without the product."""
        activities, sources, keys, logged = set(), set(), set(), []
        for folder, messages in self.messages.items():
            for _folder, uid, raw, _flags, _when, matches in messages:
                if not matches:
                    continue
                key = dedupe_key(parse_headers(raw), raw)
                keys.add(key)
                sources.add((key, folder, uid))
                logged.append((key, matches))
        # Direction is the email's: an INBOX message with a copy in Sent was sent by the
        # mailbox, so it is "out" for every customer on it.
        sent = {key for key, folder, _ in sources if folder == "Sent"}
        for key, matches in logged:
            for c, field, direction, deal in matches:
                activities.add((key, f"C-{c:02d}", field, "out" if key in sent else direction,
                                None if deal is None else f"D-{deal:02d}"))
        return {"activities": sorted(activities), "sources": sorted(sources), "emails": len(keys)}

    def in_window(self) -> int:
        """How many messages the back-fill's SEARCH SINCE returns: all but the 45-day-old."""
        return sum(1 for messages in self.messages.values() for m in messages
                   if (self.now - m[4]).days < 40)


def canonical_result() -> dict:
    """What a sync leaves behind, without ids or times: the thing a kill must not change."""
    db.session.commit()
    db.session.expire_all()
    activities = db.session.execute(
        select(Email.dedupe_key, Customer.external_id, Activity.matched_field,
               Activity.direction, Deal.external_id)
        .join(Activity, Activity.email_id == Email.id)
        .join(Customer, Customer.id == Activity.customer_id)
        .outerjoin(Deal, Deal.id == Activity.deal_id)).all()
    sources = db.session.execute(
        select(Email.dedupe_key, EmailSource.folder, EmailSource.uid).join(EmailSource.email)).all()
    result = {"activities": sorted(tuple(r) for r in activities),
              "sources": sorted(tuple(r) for r in sources),
              "emails": db.session.scalar(select(func.count()).select_from(Email))}
    db.session.commit()
    return result


def _differences(got: dict, want: dict) -> str:
    lines = []
    for part in ("activities", "sources"):
        missing = sorted(set(want[part]) - set(got[part]))
        extra = sorted(set(got[part]) - set(want[part]))
        if missing or extra:
            lines.append(f"{part}: {len(missing)} missing {missing[:5]}, "
                         f"{len(extra)} extra {extra[:5]}")
    if got["emails"] != want["emails"]:
        lines.append(f"emails: {got['emails']} stored, {want['emails']} wanted")
    return "; ".join(lines)


def _wipe_sync_state() -> None:
    """Everything a sync made, and the mailbox itself; users, customers and deals stay."""
    db.session.commit()
    for model in (Activity, EmailSource, Email, SyncRun, FolderCheckpoint, MailboxStateChange,
                  Mailbox):
        db.session.execute(delete(model))
    db.session.commit()
    get_redis().flushdb()


def _count(model, *where) -> int:
    value = db.session.scalar(select(func.count()).select_from(model).where(*where))
    db.session.commit()  # end the read at once: the worker's writes must not wait (SQLite)
    return value


def _runs() -> list[SyncRun]:
    db.session.commit()
    db.session.expire_all()
    return db.session.scalars(select(SyncRun).order_by(SyncRun.id)).all()


# -- a real worker, and a hard kill --------------------------------------------------------
def _worker_env(app, tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EIS_", "FLASK_"))}
    env.update({
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "REDIS_URL": app.config["REDIS_URL"],
        "SECRET_KEY": app.config["SECRET_KEY"],
        "EIS_ENCRYPTION_KEYS": app.config["EIS_ENCRYPTION_KEYS"],
        "EIS_MAIL_HOSTS_ALLOW": app.config["EIS_MAIL_HOSTS_ALLOW"],  # Dovecot is on 127.0.0.1
        "EIS_INSTANCE_PATH": str(tmp_path / "worker-instance"),  # not the repository's instance/
        # Small batches: many more commits for a kill to land between or inside (the default
        # 1,000 would make four of this back-fill); the undisturbed runs use the default.
        "EIS_HEADER_BATCH": "200",
        "EIS_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def _start_worker(env: dict, log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "worker.py", "--burst"], cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def _kill_hard(proc: subprocess.Popen) -> bool:
    """SIGKILL the worker and its work-horse, as a crash of the machine would. RQ puts the
    horse in a process group of its own, so killing the worker's group alone would leave
    the horse syncing; the worker is stopped first so that it cannot see its horse die and
    tidy up. Returns False when the worker had already exited by itself."""
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGSTOP)
    horses = children_of(proc.pid)
    for pid in horses:
        os.kill(pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in horses):
        assert time.monotonic() < deadline, f"work-horse {horses} still alive after SIGKILL"
        time.sleep(0.01)
    return True


def _recover(mailbox_id: int) -> tuple[int, list[str]]:
    """After a crash, what production does until the mailbox can be queued again; returns
    the number of runs recovered and notes on what else it took."""
    notes = []
    db.session.commit()
    recovered = recover_stale_runs(0)  # the scheduler's tick, EIS_RUN_STALE_SECONDS later
    assert _count(SyncRun, SyncRun.status == "running") == 0
    redis = get_redis()
    key = lock_key(mailbox_id)
    held = redis.get(key)
    if held is not None:
        # The dead worker still holds the mailbox lock: it was killed between claiming it
        # and recording its run ("claim-..."), or after its run ended but before letting go.
        # The lock has a TTL and goes by itself; deleting it stands in for that wait.
        held = held.decode()
        ttl = redis.ttl(key)
        assert 0 < ttl <= LOCK_TTL_SECONDS, (held, ttl)
        if not held.startswith("claim-"):
            assert db.session.get(SyncRun, int(held)).status == "succeeded", held
        notes.append(f"lock {held!r} left to expire (TTL {ttl} s)")
        redis.delete(key)
    job, created = enqueue_sync(mailbox_id, "backfill")
    if recovered:
        # recover_stale_runs took the dead run's RQ job out: the mailbox queues at once.
        assert created, f"a recovered run left job {job.id} {job.get_status()}"
    if not created:
        # Killed before it recorded a run, the horse's job is still "started" in Redis.
        # RQ's maintenance (every worker runs it, at start and every 10 minutes) fails such a
        # job once its execution stops heart-beating (job_monitoring_interval + 60 s): run
        # that clean-up as it will run then, and the mailbox can be queued again.
        assert job.get_status(refresh=True) == JobStatus.STARTED, job.get_status()
        get_queue("sync").started_job_registry.cleanup(
            timestamp=time.time() + DEFAULT_JOB_MONITORING_INTERVAL + 61)
        assert job.get_status(refresh=True) == JobStatus.FAILED, job.get_status()
        job, created = enqueue_sync(mailbox_id, "backfill")
        notes.append("its RQ job failed as abandoned")
    assert created, f"the mailbox cannot be queued again: job {job.id} is {job.get_status()}"
    return recovered, notes


def _wait_for_new_run(proc: subprocess.Popen, runs_before: int, log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while _count(SyncRun) <= runs_before:
        assert proc.poll() is None, (f"the worker exited ({proc.returncode}) without starting "
                                     f"a run:\n{log_path.read_text()[-3000:]}")
        assert time.monotonic() < deadline, f"no run in 60 s:\n{log_path.read_text()[-3000:]}"
        time.sleep(0.01)


def test_worker_killed_at_random_points_during_backfill_gives_the_undisturbed_result(
        app, mail, world, dovecot, tmp_path):
    seed = int(os.environ.get("EIS_DURABILITY_SEED") or random.SystemRandom().randrange(2**32))
    print(f"EIS_DURABILITY_SEED={seed}")
    rng = random.Random(seed)
    for i in range(CUSTOMERS):  # as world.customer does, in one commit
        crm.upsert_customer(f"C-{i:02d}", name=f"Client {i}", primary_email=_customer_address(i))
    db.session.commit()
    for d in range(DEALS):
        world.deal(f"D-{d:02d}", f"C-{d:02d}", f"C-{d + 25:02d}")
    address = mail.imap_user("backfill")
    rep = world.user(f"backfill-{mail.tag}@crm.test", "rep")
    mailbox = Backfill(address)
    mailbox.write(dovecot)
    expected = mailbox.expected()
    duplicates = len(expected["sources"]) - expected["emails"]
    # The mailbox is what it says: ~10% customer mail, copies in two folders, no Message-ID.
    assert (mailbox.in_window(), len(expected["sources"]), expected["emails"]) == (3269, 442, 344)
    assert sum(1 for key, *_ in expected["activities"] if key.startswith("sha256:")) > 20

    # An undisturbed run: the result every trial must give.
    box = mail.link(rep, address)
    started = time.monotonic()
    run = mail.sync(box, "backfill")
    undisturbed_seconds = time.monotonic() - started
    assert run.status == "succeeded", run.error_detail
    assert (run.seen, run.logged, run.duplicates, run.bad_messages) == (
        mailbox.in_window(), expected["emails"], duplicates, 0)
    baseline = canonical_result()
    assert baseline == expected, _differences(baseline, expected)
    print(f"undisturbed back-fill: {undisturbed_seconds:.2f} s")

    env = _worker_env(app, tmp_path)
    for trial in range(TRIALS):
        _wipe_sync_state()
        box = mail.link(rep, address)
        assert enqueue_sync(box.id, "backfill")[1]
        story = []
        for attempt in range(1 + (rng.random() < 0.5)):  # killed once or twice
            log_path = tmp_path / f"worker-{trial}-{attempt}.log"
            runs_before = _count(SyncRun)
            proc = _start_worker(env, log_path)
            try:
                _wait_for_new_run(proc, runs_before, log_path)
                delay = rng.uniform(0, undisturbed_seconds * (0.9 if attempt == 0 else 0.5))
                time.sleep(delay)
                killed = _kill_hard(proc)
            finally:
                if proc.poll() is None:
                    _kill_hard(proc)
            stored = _count(EmailSource)
            if not killed:
                assert proc.returncode == 0, log_path.read_text()[-3000:]
            recovered, notes = _recover(box.id)
            story.append((f"SIGKILL at +{delay:.2f} s" if killed
                          else f"finished before the kill at +{delay:.2f} s")
                         + f", {stored}/{len(expected['sources'])} sources stored, "
                         + f"{recovered} run recovered" + "".join(f", {n}" for n in notes))
        # Then the next run, undisturbed (a worker of our own, in this process).
        mail.work()
        runs = _runs()
        print(f"trial {trial}: " + "; ".join(story))
        where = f"seed {seed}, trial {trial} ({'; '.join(story)})"
        assert runs[-1].status == "succeeded", (
            f"{where}: the run after the kills failed: {runs[-1].error_class}: "
            f"{runs[-1].error_detail}\n{dovecot.log_tail(40)}")
        outcomes = [(r.status, r.error_class) for r in runs]
        assert all(o in (("succeeded", None), ("failed", "worker_lost")) for o in outcomes), \
            (where, outcomes)
        result = canonical_result()
        assert result == baseline, f"{where}: {_differences(result, baseline)}"
        # The counts are stored with each batch too: over all the runs, nothing counted twice.
        totals = tuple(sum(getattr(r, count) for r in runs)
                       for count in ("seen", "logged", "duplicates"))
        assert totals == (mailbox.in_window(), expected["emails"], duplicates), (where, totals)


# -- the corpus ----------------------------------------------------------------------------
def test_own_hostile_mail_syncs_and_a_bad_message_never_stops_the_run(mail, world, dovecot):
    files = corpus.own_files()
    assert len(files) >= 30
    accepted, refused, expected_keys = _sync_every_file(mail, world, dovecot, files, corpus.OWN_DIR)
    assert refused == []  # all of it is mail a server takes
    assert len(expected_keys) >= 30


def test_whole_corpus_syncs_and_a_bad_message_never_stops_the_run(mail, world, dovecot):
    files = corpus.external_files()  # skipped (failed under EIS_REQUIRE_CORPUS=1) without it
    assert len(files) > 150
    root = corpus.EXTERNAL
    accepted, refused, expected_keys = _sync_every_file(mail, world, dovecot, files, root)
    assert len(accepted) > 150
    assert len(expected_keys) > 100


def _sync_every_file(mail, world, dovecot, files: list[Path], root: Path):
    """APPEND each file as it is and back-fill the mailbox: every message either stored on
    the customers it names or recorded as a bad message, and the run succeeds.
    Returns (accepted files, files Dovecot refused, dedupe keys expected stored)."""
    address = mail.imap_user("corpus")
    rep = world.user(f"corpus-{mail.tag}@crm.test", "rep")

    # Every address in the files that the CRM would accept becomes a customer's.
    headers = {path: parse_headers(path.read_bytes()) for path in files}
    customer_addresses = set()
    for parsed in headers.values():
        for candidate in parsed.all_addresses():
            try:
                customer_addresses.add(normalise_address(candidate))
            except ValueError:
                continue
    for i, customer_address in enumerate(sorted(customer_addresses)):  # world.customer, one commit
        crm.upsert_customer(f"C-{i}", name=f"C-{i}", primary_email=customer_address)
    db.session.commit()

    # APPEND each file as it is, received yesterday (inside the window).
    when = datetime.now().astimezone() - timedelta(days=1)
    accepted, refused = [], []
    client = dovecot.client(address)
    try:
        for path in files:
            try:
                client.append("INBOX", path.read_bytes(), (), msg_time=when)
            except Exception as exc:  # refused by the server: such mail never reaches a mailbox
                refused.append((str(path.relative_to(root)), f"{type(exc).__name__}: {exc}"))
            else:
                accepted.append(path)
    finally:
        client.logout()
    print(f"{len(accepted)} files appended, {len(refused)} refused by Dovecot: {refused}")

    expected_keys = {dedupe_key(headers[path], path.read_bytes()) for path in accepted
                     if headers[path].all_addresses() & customer_addresses}

    box = mail.link(rep, address)
    run = mail.sync(box, "backfill")

    assert run.status == "succeeded", (run.error_class, run.error_detail)
    assert run.seen == len(accepted)
    assert run.bad_messages == len(run.bad_message_log)
    for entry in run.bad_message_log:
        assert set(entry) == {"folder", "uid", "reason"} and entry["folder"] == "INBOX", entry
        assert isinstance(entry["uid"], int) and entry["reason"], entry
    stored = set(db.session.scalars(select(Email.dedupe_key)).all())
    assert stored == expected_keys, (
        f"missing {sorted(expected_keys - stored)[:10]}, "
        f"unexpected {sorted(stored - expected_keys)[:10]}, bad messages {run.bad_message_log}")
    assert run.logged == len(expected_keys)
    # Each stored email is on the Activities of customers its headers name. (Some corpus
    # files share a Message-ID but not their recipients: the copies are one email then.)
    named: dict[str, set[str]] = {}
    for path in accepted:
        key = dedupe_key(headers[path], path.read_bytes())
        named.setdefault(key, set()).update(headers[path].all_addresses())
    for row in db.session.scalars(select(Email)):
        matched = {activity.matched_address for activity in row.activities}
        assert matched and matched <= named[row.dedupe_key], (row.dedupe_key, matched)

    again = mail.sync(box)
    assert again.id != run.id
    assert (again.status, again.seen, again.logged) == ("succeeded", 0, 0)
    return accepted, refused, expected_keys


def test_a_message_too_long_for_the_database_is_recorded_and_the_run_goes_on(mail, world):
    """Mail in the wild has names and Message-IDs longer than any column: such a message is
    stored (cut to fit) or recorded as a bad message; the rest of its batch is stored."""
    rep, box = mail.rep_with_mailbox("lina")
    world.customer("C-NOVAK", "jiri.novak@client.test")
    me = box.address
    long_name = " ".join(["Jiří Novák"] * 60)  # 659 characters; emails.from_name holds 500
    long_id = "<" + "x" * 1200 + "@client.test>"  # emails.message_id holds 998
    hostile = {
        mail.put(me, from_=(long_name, "jiri.novak@client.test"), to=me,
                 subject="A very long name"): "A very long name",
        mail.put(me, from_="jiri.novak@client.test", to=me, subject="A very long Message-ID",
                 message_id=long_id): "A very long Message-ID",
    }
    mail.put(me, from_="jiri.novak@client.test", to=me, subject="An ordinary email")

    run = mail.sync(box, "backfill")

    assert run.status == "succeeded", (run.error_class, run.error_detail)
    logged = mail.activities()
    assert ("C-NOVAK", "An ordinary email") in logged
    bad = {entry["uid"]: entry["reason"] for entry in run.bad_message_log}
    for uid, subject in hostile.items():
        assert ("C-NOVAK", subject) in logged or bad.get(uid), (subject, run.bad_message_log)
    assert (run.seen, run.logged + run.bad_messages) == (3, 3)
    again = mail.sync(box)
    assert (again.status, again.seen) == ("succeeded", 0)
