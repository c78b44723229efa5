"""Scheduling: 10-30 minutes with jitter, one leader, stuck runs recovered, time-outs."""
import random
import socket
import threading
import time
from datetime import timedelta

import pytest

from portal.extensions import db
from portal.jobs.schedule import LEADER_KEY, Scheduler, enqueue_due, recover_stale_runs
from portal.models import Mailbox, SyncRun
from portal.queue import get_queue, get_redis, job_state, sync_job_id
from portal.scheduling import backoff_delay, next_interval
from portal.sync import lock_key
from portal.timeutil import utcnow


def test_busy_mailboxes_and_active_owners_sync_nearer_ten_minutes_quiet_ones_nearer_thirty():
    rng = random.Random(1)
    busy = [next_interval(min_minutes=10, max_minutes=30, recent_messages=50, owner_active=False, rng=rng)
            for _ in range(200)]
    active = [next_interval(min_minutes=10, max_minutes=30, recent_messages=0, owner_active=True, rng=rng)
              for _ in range(200)]
    quiet = [next_interval(min_minutes=10, max_minutes=30, recent_messages=0, owner_active=False, rng=rng)
             for _ in range(200)]
    for sample in (busy, active, quiet):
        assert all(timedelta(minutes=10) <= d <= timedelta(minutes=30) for d in sample)
    assert max(busy) <= timedelta(minutes=13)
    assert max(active) < min(quiet)
    assert min(quiet) >= timedelta(minutes=27)


def test_jitter_spreads_mailboxes_connected_together():
    rng = random.Random(2)
    spread = {round(next_interval(min_minutes=10, max_minutes=30, recent_messages=5, owner_active=False,
                                  rng=rng).total_seconds()) for _ in range(1000)}
    assert len(spread) > 300  # not one instant for all of them


def test_backoff_grows_is_capped_and_honours_retry_after():
    rng = random.Random(3)
    first, fifth, far = (backoff_delay(n, rng=rng) for n in (1, 5, 40))
    assert timedelta(seconds=30) <= first <= timedelta(seconds=60)
    assert first < fifth <= timedelta(hours=1) and far <= timedelta(hours=1)
    assert backoff_delay(1, retry_after=900, rng=rng) == timedelta(seconds=900)


def _mailbox(world, state="active", next_sync_at=None, address="a@agency.test"):
    owner = world.user(address.replace("agency", "crm"))
    mailbox = Mailbox(user_id=owner.id, address=address, state=state, next_sync_at=next_sync_at,
                      imap_host="127.0.0.1", imap_port=1, imap_security="none")
    db.session.add(mailbox)
    db.session.commit()
    return mailbox


def test_due_mailboxes_are_queued_once_problematic_and_disconnected_never(world):
    now = utcnow()
    due = _mailbox(world, next_sync_at=now - timedelta(minutes=1), address="due@agency.test")
    new = _mailbox(world, state="pending", address="new@agency.test")
    later = _mailbox(world, next_sync_at=now + timedelta(minutes=5), address="later@agency.test")
    broken = _mailbox(world, state="problematic", next_sync_at=now - timedelta(hours=1), address="broken@agency.test")
    gone = _mailbox(world, state="disconnected", address="gone@agency.test")
    assert enqueue_due() == 2
    assert enqueue_due() == 0  # a queued mailbox is not picked again
    # The first sync (the back-fill) has a job of its own; the scheduled polls go in batches.
    states = {m.address: job_state(sync_job_id(m.id)) for m in (due, new, later, broken, gone)}
    assert states == {"due@agency.test": None, "new@agency.test": "queued", "later@agency.test": None,
                      "broken@agency.test": None, "gone@agency.test": None}
    batches = [job for job in get_queue("sync").get_jobs() if job.func_name == "portal.jobs.sync.sync_mailboxes"]
    assert [job.kwargs["mailbox_ids"] for job in batches] == [[due.id]]


def test_due_polls_go_fifty_to_a_job_and_each_mailbox_once(app, world):
    boxes = [_mailbox(world, address=f"b{i}@agency.test", next_sync_at=utcnow() - timedelta(minutes=1))
             for i in range(120)]
    assert enqueue_due() == 120
    batches = [job.kwargs["mailbox_ids"] for job in get_queue("sync").get_jobs()]
    assert [len(ids) for ids in batches] == [50, 50, 20]
    assert sorted(i for ids in batches for i in ids) == sorted(b.id for b in boxes)
    assert enqueue_due() == 0


def test_only_one_scheduler_leads_and_another_takes_over_when_it_dies(app, world):
    _mailbox(world)
    first, second = Scheduler(app, "first"), Scheduler(app, "second")
    assert first.tick()["leader"] is True
    assert second.tick() == {"leader": False, "enqueued": 0, "recovered": 0}
    assert first.tick()["leader"] is True  # the lease is renewed by its holder
    get_redis().delete(LEADER_KEY)  # the leader died and its lease ran out
    assert second.tick()["leader"] is True
    assert first.tick()["leader"] is False


def test_schedulers_in_parallel_threads_queue_each_mailbox_once(app, world):
    for i in range(20):
        _mailbox(world, address=f"m{i}@agency.test")
    results = []

    def tick(name):
        results.append(Scheduler(app, name).tick())

    threads = [threading.Thread(target=tick, args=(f"s{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r["leader"] for r in results) == 1
    assert sum(r["enqueued"] for r in results) == 20


def test_run_that_stopped_heart_beating_is_failed_and_its_lock_released(world):
    mailbox = _mailbox(world)
    run = SyncRun(mailbox_id=mailbox.id, trigger="scheduled", heartbeat_at=utcnow() - timedelta(minutes=10))
    fresh = SyncRun(mailbox_id=mailbox.id, trigger="scheduled", heartbeat_at=utcnow())
    db.session.add_all([run, fresh])
    db.session.commit()
    get_redis().set(lock_key(mailbox.id), str(run.id))
    assert recover_stale_runs(300) == 1
    assert (run.status, run.error_class) == ("failed", "worker_lost")
    assert "stopped heart-beating" in run.error_detail
    assert fresh.status == "running"
    assert get_redis().get(lock_key(mailbox.id)) is None


def test_imap_that_never_answers_times_out(app, world):
    """Every IMAP socket has a time-out: a server that accepts and then says nothing."""
    from portal.accounts import linking as service

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    app.config["EIS_IMAP_TIMEOUT_SECONDS"] = 1
    started = time.monotonic()
    try:
        with pytest.raises(service.LinkError) as caught:
            service.try_login(service.ImapSettings(address="a@agency.test", login="a", password="p",
                                                   imap_host="127.0.0.1", imap_port=port, imap_security="none"))
    finally:
        listener.close()
    assert caught.value.code == "connection_failed"
    assert time.monotonic() - started < 5
