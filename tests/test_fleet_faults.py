"""The fleet heals itself, within a bound (issue 13): a worker SIGKILLed, Redis killed and
restarted, PostgreSQL restarted and Dovecot restarted, one after the other, under running
`python worker.py` processes and a steady trickle of new customer mail. Every message is
logged exactly once, the last one within twice the longest sync interval after the last
fault ended, and the workers that were not killed are still alive (and registered).

Its servers are its own (a PostgreSQL cluster, a Redis and a Dovecot): restarting them
disturbs no other test. The intervals are a few seconds (settings through the environment,
as an operator sets them), so the whole story takes about a minute and a half.
"""
from __future__ import annotations

import itertools
import threading
import time
import uuid

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from devservers import Dovecot, PostgresServer, RedisServer, WorkerProcess, free_port, make_message

pytestmark = pytest.mark.slow

MAILBOXES = 30
MIN_MINUTES, MAX_MINUTES = 0.1, 0.2  # every 6-12 s
BOUND_SECONDS = 2 * MAX_MINUTES * 60
DOWN_SECONDS = 3  # how long each server stays away
BETWEEN_FAULTS_SECONDS = 8
TRICKLE_EVERY_SECONDS = 0.3
CUSTOMER = "client@customer.test"


class Trickle(threading.Thread):
    """New customer mail, one message every TRICKLE_EVERY_SECONDS to the next mailbox in turn,
    appended over IMAP as a mail server receives it. While Dovecot is down an append is
    tried again until it works; only appended messages count."""

    def __init__(self, dovecot: Dovecot, addresses: list[str]):
        super().__init__(daemon=True, name="trickle")
        self.dovecot, self.addresses = dovecot, addresses
        self.appended: list[str] = []  # Message-IDs, without <>
        self.failed_tries = 0
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for n in itertools.count():
                if self.stopping.wait(TRICKLE_EVERY_SECONDS):
                    return
                address = self.addresses[n % len(self.addresses)]
                message_id = f"trickle-{n}-{uuid.uuid4().hex[:6]}@customer.test"
                raw = make_message(from_=f"Client <{CUSTOMER}>", to=address, subject=f"Order question {n}",
                                   body=f"Message {n}", message_id=f"<{message_id}>")
                while True:
                    try:
                        self.dovecot.append(address, "INBOX", raw)
                        break
                    except Exception:  # Dovecot is restarting: the sender's server retries
                        self.failed_tries += 1
                        if self.stopping.wait(0.2):
                            return
                self.appended.append(message_id)
        except BaseException as exc:  # the test reports it
            self.error = exc

    def stop(self) -> list[str]:
        self.stopping.set()
        self.join(30)
        assert self.error is None, self.error
        return list(self.appended)


@pytest.fixture
def fleet(tmp_path):
    """Private PostgreSQL, Redis and Dovecot; a migrated database; an app configured for
    intervals of a few seconds, the workers configured the same way through the environment."""
    from flask_migrate import upgrade

    from portal import create_app
    from portal.extensions import db

    servers = []
    try:
        postgres = PostgresServer().start()
        servers.append(postgres)
        redis_server = RedisServer(port=free_port()).start()  # a fixed port: restarted on it
        servers.append(redis_server)
        dovecot = Dovecot().start()
        servers.append(dovecot)
        admin = sa.create_engine(postgres.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text("CREATE DATABASE eis"))
        admin.dispose()
        app = create_app({
            "TESTING": True,
            "SECRET_KEY": "fleet-" + uuid.uuid4().hex,
            "SQLALCHEMY_DATABASE_URI": postgres.database_url("eis"),
            "REDIS_URL": redis_server.url,
            "EIS_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "EIS_PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000",
            "EIS_MAIL_HOSTS_ALLOW": "127.0.0.1",
            "EIS_SYNC_INTERVAL_MIN_MINUTES": MIN_MINUTES,
            "EIS_SYNC_INTERVAL_MAX_MINUTES": MAX_MINUTES,
            "EIS_SCHEDULER_TICK_SECONDS": 1.0,
            "EIS_RUN_STALE_SECONDS": 8,
            "EIS_IMAP_TIMEOUT_SECONDS": 10,
            # Not what this test is about: the faults come seconds apart, so a mailbox may
            # meet several of them without a good sync between; the admin's threshold for
            # Problematic would then end the story (tests/test_sync.py checks the threshold).
            "EIS_PROBLEMATIC_AFTER_FAILURES": 50,
            "EIS_INSTANCE_PATH": str(tmp_path / "instance"),
        })
        with app.app_context():
            upgrade()
            yield app, postgres, redis_server, dovecot
            db.session.remove()
            db.engine.dispose()
    finally:
        for server in reversed(servers):
            server.close()


def _link_mailboxes(app, dovecot: Dovecot) -> list[str]:
    from portal.accounts import linking
    from portal.extensions import db
    from tests.factories import World

    world = World(app)
    world.customer("C-1", CUSTOMER)
    addresses = []
    for i in range(MAILBOXES):
        address = f"rep{i}@agency.test"
        dovecot.add_user(address, "imap-pass-1")
        rep = world.user(f"rep{i}@crm.test", "rep")
        linking.link_imap_mailbox(rep, linking.ImapSettings(
            address=address, login=address, password="imap-pass-1", imap_host="127.0.0.1",
            imap_port=dovecot.imap_port, imap_security="none"))
        db.session.commit()
        addresses.append(address)
    return addresses


def _logged() -> dict[str, int]:
    """Message-ID -> activities logged for it, from a fresh session (the database restarts)."""
    from portal.extensions import db
    from portal.models import Activity, Email

    db.session.remove()
    rows = db.session.execute(
        sa.select(Email.message_id, sa.func.count(Activity.id)).outerjoin(Activity, Activity.email_id == Email.id)
        .group_by(Email.id, Email.message_id)).all()
    db.session.remove()
    found: dict[str, int] = {}
    for message_id, activities in rows:
        key = (message_id or "").strip("<>")
        found[key] = found.get(key, 0) + activities + 1000  # each Email row counts 1000
    return found


def _wait_until_logged(message_ids: list[str], timeout: float) -> float | None:
    """Poll until every message is logged; the monotonic time it was seen so, or None."""
    deadline = time.monotonic() + timeout
    wanted = set(message_ids)
    while time.monotonic() < deadline:
        try:
            if wanted <= set(_logged()):
                return time.monotonic()
        except sa.exc.OperationalError:
            pass  # our own session met the restarted database
        time.sleep(0.25)
    return None


def test_fleet_heals_after_a_worker_redis_postgresql_and_dovecot_fail_in_turn(fleet):
    app, postgres, redis_server, dovecot = fleet
    addresses = _link_mailboxes(app, dovecot)
    extra = {"EIS_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
    leader = WorkerProcess(app.config, extra, scheduler=True).start()
    doomed = WorkerProcess(app.config, extra).start()
    workers = [leader, doomed]
    trickle = Trickle(dovecot, addresses)
    story: list[str] = []
    t0 = time.monotonic()

    def note(what: str) -> None:
        story.append(f"+{time.monotonic() - t0:5.1f} s {what}")

    try:
        trickle.start()
        # The fleet works before anything goes wrong: the first messages are logged.
        time.sleep(2)
        first = list(trickle.appended)
        assert first and _wait_until_logged(first, 30) is not None, \
            f"nothing logged before the faults\n{leader.log_tail()}"
        note(f"{len(first)} messages logged; faults begin")

        # 1. A worker is SIGKILLed in whatever it was doing, and a new one started.
        doomed.kill()
        replacement = WorkerProcess(app.config, extra).start()
        workers.append(replacement)
        note("worker SIGKILLed, another started")
        time.sleep(BETWEEN_FAULTS_SECONDS)

        # 2. Redis killed (its queues, locks and worker registrations lost) and started again.
        redis_server.kill()
        note("Redis killed")
        time.sleep(DOWN_SECONDS)
        redis_server.start()
        note("Redis back (empty)")
        time.sleep(BETWEEN_FAULTS_SECONDS)

        # 3. PostgreSQL stopped (clients cut off) and started again.
        postgres.stop("fast")
        note("PostgreSQL stopped")
        time.sleep(DOWN_SECONDS)
        postgres.start()
        note("PostgreSQL back")
        time.sleep(BETWEEN_FAULTS_SECONDS)

        # 4. Dovecot stopped and started again: every sync meanwhile fails "server unreachable".
        dovecot.stop()
        note("Dovecot stopped")
        time.sleep(DOWN_SECONDS)
        dovecot.start()
        faults_ended = time.monotonic()
        note("Dovecot back: the last fault ended")

        time.sleep(3)  # a little more mail after the last fault
        appended = trickle.stop()
        note(f"{len(appended)} messages appended ({trickle.failed_tries} appends retried)")
        done = _wait_until_logged(appended, BOUND_SECONDS * 3)
        logged = _logged()
        missing = [m for m in appended if m not in logged]
        note(f"all logged {done - faults_ended:.1f} s after the last fault" if done else
             f"{len(missing)} never logged")
        print("\n".join(story))
        for worker in (leader, replacement):
            print(f"--- {worker.name}: what it said about the faults")
            print("\n".join(line for line in worker.log_tail(100_000).splitlines() if any(
                word in line for word in ("Redis", "fresh worker", "registering again", "scheduler tick",
                                          "answers again", "is gone", "the scheduler"))))

        # Every message logged, exactly once: one email, one activity on the customer; none
        # made up.
        assert not missing, (f"{len(missing)} of {len(appended)} never logged: {missing[:5]}\n"
                             + "\n".join(story) + "\n" + leader.log_tail(60))
        assert {m: logged[m] for m in appended} == {m: 1001 for m in appended}, "logged more than once"
        assert set(logged) == set(appended)
        # Within the bound: twice the longest interval after the last fault ended.
        assert done - faults_ended <= BOUND_SECONDS, "\n".join(story)

        # The workers that were not killed lived through it all and count as alive.
        connection = redis_server.client()
        for worker in (leader, replacement):
            assert worker.running, f"{worker.name} exited\n{worker.log_tail(60)}"
            assert connection.sismember("rq:workers", f"rq:worker:{worker.name}"), \
                f"{worker.name} is not registered after Redis came back empty\n{worker.log_tail(60)}"
        # Nothing was given up on: every mailbox is still syncing.
        from portal.extensions import db
        from portal.models import Mailbox

        states = dict(db.session.execute(sa.select(Mailbox.state, sa.func.count()).group_by(Mailbox.state)).all())
        assert states == {"active": MAILBOXES}, states
    finally:
        trickle.stopping.set()
        for worker in workers:
            worker.stop()


def test_a_worker_outlives_redis_going_away_in_the_middle_of_a_job(tmp_path):
    """RQ's work loop quits when Redis goes away while a job runs (its bookkeeping after the
    job fails): worker.py waits for Redis and carries on with a fresh worker."""
    from rq import Queue
    from rq.job import Job, JobStatus

    redis_server = RedisServer(port=free_port()).start()
    config = {"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'unused.sqlite3'}", "REDIS_URL": redis_server.url,
              "SECRET_KEY": "worker-" + uuid.uuid4().hex, "EIS_ENCRYPTION_KEYS": Fernet.generate_key().decode()}
    worker = WorkerProcess(config, {"PYTHONUNBUFFERED": "1"})
    try:
        worker.start()
        connection = redis_server.client()
        job = Queue("default", connection=connection).enqueue_call("time.sleep", args=(2,))
        deadline = time.monotonic() + 10
        while job.get_status(refresh=True) != JobStatus.STARTED:
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.05)
        redis_server.kill()  # in the middle of the job
        time.sleep(DOWN_SECONDS)
        redis_server.start()
        connection = redis_server.client()
        deadline = time.monotonic() + 30
        while not connection.sismember("rq:workers", f"rq:worker:{worker.name}"):
            assert worker.running, f"worker.py exited\n{worker.log_tail()}"
            assert time.monotonic() < deadline, f"not registered again\n{worker.log_tail()}"
            time.sleep(0.1)
        # And it works: a new job is done.
        job = Queue("default", connection=connection).enqueue_call("os.getpid")
        deadline = time.monotonic() + 30
        while Job.fetch(job.id, connection=connection).get_status() != JobStatus.FINISHED:
            assert time.monotonic() < deadline, f"the job after the outage did not run\n{worker.log_tail()}"
            time.sleep(0.1)
        assert worker.running
        assert "starting a fresh worker" in worker.log_tail(200), worker.log_tail()
    finally:
        worker.stop()
        redis_server.close()
