"""The fleet heals itself within a bound (issue 13), piece by piece; tests/test_fleet_faults.py
runs the whole story against real workers and servers.

- nothing waits longer than the longest interval: a transient fault's back-off, a queued
  job's lease;
- the intervals may be fractions of a minute where the configuration gives them;
- when a mail server answers again, its mailboxes backing off are due soon, spread out;
- Redis away never fails a sync through that;
- a job whose worker died before it recorded a run no longer blocks its mailbox;
- the scheduler's loop outlives failing ticks.
"""
import logging
import os
import random
import subprocess
import threading
from datetime import timedelta

from rq import Worker
from rq.job import JobStatus

from portal import create_app, runtime_settings
from portal.accounts import recovery, state
from portal.extensions import db
from portal.jobs.schedule import Scheduler, enqueue_due, fail_orphaned_jobs
from portal.mail.errors import Classified
from portal.models import Mailbox
from portal.queue import enqueue_sync, get_queue, get_redis
from portal.scheduling import backoff_delay, queued_lease
from portal.sync import lock_key
from portal.timeutil import utcnow

UNREACHABLE = Classified(reason="server_unreachable", refusal=False, detail="[Errno 111] Connection refused",
                         retry_after=None)


def _mailbox(world, address, *, host="imap.agency.test", port=993, state_="active", next_sync_at=None):
    owner = world.user(address.replace("agency", "crm"))
    mailbox = Mailbox(user_id=owner.id, address=address, state=state_, imap_host=host, imap_port=port,
                      imap_security="ssl", next_sync_at=next_sync_at)
    db.session.add(mailbox)
    db.session.commit()
    return mailbox


def _longest(app, minutes):
    app.config["EIS_SYNC_INTERVAL_MIN_MINUTES"] = minutes / 2
    app.config["EIS_SYNC_INTERVAL_MAX_MINUTES"] = minutes


# -- the bounds ---------------------------------------------------------------------------------
def test_backoff_never_exceeds_the_longest_interval_unless_the_provider_asks():
    rng = random.Random(4)
    two_minutes = timedelta(minutes=2)
    delays = [backoff_delay(n, longest=two_minutes, rng=rng) for n in range(1, 40)]
    assert max(delays) <= two_minutes
    assert delays[0] <= timedelta(seconds=60)  # the first retry still comes soon
    assert backoff_delay(40, longest=timedelta(hours=5), rng=rng) <= timedelta(hours=1)  # the old cap stays
    assert backoff_delay(1, longest=two_minutes, retry_after=900, rng=rng) == timedelta(seconds=900)


def test_a_queued_mailbox_is_due_again_within_the_longest_interval(app, world):
    assert queued_lease(timedelta(minutes=30)) == timedelta(minutes=5)
    assert queued_lease(timedelta(seconds=12)) == timedelta(seconds=12)
    _longest(app, 1.5)
    mailbox = _mailbox(world, "due@agency.test", next_sync_at=utcnow() - timedelta(seconds=1))
    before = utcnow()
    assert enqueue_due() == 1
    # Redis then loses its queue, or the job dies with the database: the mailbox is picked
    # again after 90 s, not five minutes.
    assert mailbox.next_sync_at <= before + timedelta(minutes=1.5, seconds=1)


def test_failures_back_off_within_the_longest_interval(app, world):
    _longest(app, 0.2)
    mailbox = _mailbox(world, "flaky@agency.test")
    for _ in range(4):
        state.record_failure(mailbox, UNREACHABLE)
    db.session.commit()
    assert mailbox.state == "active" and mailbox.reason == "server_unreachable"
    assert mailbox.next_sync_at - mailbox.last_sync_at <= timedelta(seconds=12)


def test_intervals_may_be_fractions_of_a_minute_from_the_environment(monkeypatch, app):
    monkeypatch.setenv("EIS_SYNC_INTERVAL_MIN_MINUTES", "0.1")
    monkeypatch.setenv("EIS_SYNC_INTERVAL_MAX_MINUTES", "0.2")
    configured = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"],
                             "REDIS_URL": app.config["REDIS_URL"]})
    with configured.app_context():
        assert runtime_settings.get("interval_min_minutes") == 0.1
        assert runtime_settings.get("interval_max_minutes") == 0.2
        assert runtime_settings.longest_interval() == timedelta(seconds=12)
        db.session.remove()
    monkeypatch.setenv("EIS_SYNC_INTERVAL_MAX_MINUTES", "45")
    configured = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"]})
    with configured.app_context():
        assert runtime_settings.get("interval_max_minutes") == 45  # whole minutes read as before
        db.session.remove()


# -- host recovery ------------------------------------------------------------------------------
def test_when_a_server_answers_again_its_mailboxes_in_back_off_are_due_soon_spread_out(app, world):
    _longest(app, 30)
    down = [_mailbox(world, f"down{i}@agency.test") for i in range(8)]
    throttled = _mailbox(world, "slow@agency.test")
    elsewhere = _mailbox(world, "other@agency.test", host="imap.elsewhere.test")
    other_port = _mailbox(world, "port@agency.test", port=143)
    for mailbox in down + [elsewhere, other_port]:
        state.record_failure(mailbox, UNREACHABLE)
    state.record_failure(throttled, Classified(reason="throttled", refusal=False, detail="[THROTTLED]",
                                               retry_after=600))
    db.session.commit()
    backing_off = {m.id: m.next_sync_at for m in down + [throttled, elsewhere, other_port]}
    assert get_redis().smembers(recovery.HOSTS_KEY) == {b"imap.agency.test:993", b"imap.elsewhere.test:993",
                                                        b"imap.agency.test:143"}

    survivor = _mailbox(world, "up@agency.test", host="IMAP.agency.test")
    now = utcnow()
    state.mark_synced(survivor, timedelta(minutes=20))
    db.session.commit()
    db.session.expire_all()
    due = sorted(db.session.get(Mailbox, m.id).next_sync_at for m in down)
    assert all(now < t <= now + timedelta(seconds=6) for t in due), due  # a handful: within seconds
    assert len(set(due)) == len(due)  # spread, never all at once
    assert all(db.session.get(Mailbox, m.id).state == "active" for m in down)  # still "retrying" until a sync works
    # A throttled mailbox waits as its provider asked; other servers were not heard from.
    for mailbox in (throttled, elsewhere, other_port):
        assert db.session.get(Mailbox, mailbox.id).next_sync_at == backing_off[mailbox.id]
    assert get_redis().smembers(recovery.HOSTS_KEY) == {b"imap.elsewhere.test:993", b"imap.agency.test:143"}
    # The next success on that server costs nothing more: the server is no longer noted.
    assert recovery.host_answered(survivor) == 0


def test_recovery_spreads_a_large_back_log_over_up_to_a_minute(app):
    assert recovery.spread_window(5, timedelta(minutes=30)) == timedelta(seconds=5)
    assert recovery.spread_window(300, timedelta(minutes=30)) == timedelta(seconds=30)
    assert recovery.spread_window(10_000, timedelta(minutes=30)) == timedelta(minutes=1)
    assert recovery.spread_window(10_000, timedelta(seconds=12)) == timedelta(seconds=6)  # half the bound


def test_redis_away_never_fails_a_sync_through_recovery(app, world, caplog):
    mailbox = _mailbox(world, "box@agency.test")
    app.extensions["eis_redis"] = None
    app.config["REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing listens there
    try:
        with caplog.at_level(logging.WARNING, logger="portal.accounts.recovery"):
            state.record_failure(mailbox, UNREACHABLE)
            state.mark_synced(mailbox, timedelta(minutes=10))
            db.session.commit()
    finally:
        app.extensions["eis_redis"] = None
    assert mailbox.state == "active" and mailbox.reason is None
    assert "its mailboxes wait out their back-off" in caplog.text and "host recovery skipped" in caplog.text


# -- a killed worker's job ---------------------------------------------------------------------
def _started_by(worker_name: str, pid: int, mailbox_id: int):
    redis = get_redis()
    worker = Worker(["sync"], connection=redis, name=worker_name)
    worker.pid = pid
    worker.register_birth()
    job, _ = enqueue_sync(mailbox_id, "scheduled")
    get_queue("sync").remove(job)  # dequeued by that worker...
    worker.prepare_execution(job)
    worker.prepare_job_execution(job)  # ...and started
    assert job.get_status(refresh=True) == JobStatus.STARTED
    return job


def test_a_job_whose_worker_died_before_its_run_no_longer_blocks_its_mailbox(world):
    dead = subprocess.Popen(["true"])
    dead.wait()
    killed = _mailbox(world, "killed@agency.test")
    busy = _mailbox(world, "busy@agency.test")
    _started_by("killed-worker", dead.pid, killed.id)
    _started_by("busy-worker", os.getpid(), busy.id)
    redis = get_redis()
    redis.set(lock_key(killed.id), "claim-0123", ex=120)  # killed between its claim and its run
    assert enqueue_sync(killed.id, "scheduled")[1] is False  # blocked: RQ still thinks it runs

    assert fail_orphaned_jobs() == 1
    assert redis.get(lock_key(killed.id)) is None
    assert enqueue_sync(killed.id, "scheduled")[1] is True
    assert enqueue_sync(busy.id, "scheduled")[1] is False  # a live worker's job is left alone


# -- the scheduler's loop -------------------------------------------------------------------------
def test_the_scheduler_loop_outlives_failing_ticks(app, caplog, monkeypatch):
    app.config["EIS_SCHEDULER_TICK_SECONDS"] = 0.01
    scheduler = Scheduler(app, "loop")
    stop = threading.Event()
    calls = []

    def tick():
        calls.append(1)
        if len(calls) <= 3:
            raise ConnectionError("Redis went away")
        if len(calls) == 5:
            stop.set()
        return {}

    monkeypatch.setattr(scheduler, "tick", tick)
    with caplog.at_level(logging.WARNING, logger="portal.jobs.schedule"):
        scheduler.run_forever(stop)
    assert len(calls) == 5
    assert "scheduler tick failed" in caplog.text
    assert "scheduler ticks work again after 3 failed ticks" in caplog.text
