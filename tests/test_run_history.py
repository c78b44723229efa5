"""Sync history with a lifetime: quiet polls are counts per mailbox per day, the runs that
did something are kept EIS_RUN_RETENTION_DAYS, and the pages still show both. Real Dovecot,
real RQ workers (burst), both databases."""
import time
from datetime import timedelta

from sqlalchemy import event, func, select

from portal import run_history
from portal.extensions import db
from portal.jobs.schedule import Scheduler
from portal.models import Mailbox, SyncQuietDay, SyncRun
from portal.queue import enqueue_sync_batch
from portal.sync import run_sync
from portal.timeutil import utcnow


def _runs(box) -> int:
    return db.session.scalar(select(func.count(SyncRun.id)).where(SyncRun.mailbox_id == box.id))


def _quiet(box) -> int:
    return db.session.scalar(select(func.coalesce(func.sum(SyncQuietDay.polls), 0))
                             .where(SyncQuietDay.mailbox_id == box.id))


def test_a_quiet_poll_is_counted_for_the_day_and_a_poll_with_mail_is_a_run(mail, world):
    rep, box = mail.rep_with_mailbox("quiet")
    world.customer("C-Q", "quinn@client.test")
    mail.put(box.address, from_="quinn@client.test", to=box.address, subject="First")
    first = mail.sync(box)
    assert (first.status, first.logged, _runs(box)) == ("succeeded", 1, 1)
    before = db.session.get(Mailbox, box.id).last_success_at

    mail.sync(box, "scheduled")
    mail.sync(box, "scheduled")
    box = db.session.get(Mailbox, box.id)
    assert _runs(box) == 1 and _quiet(box) == 2  # two polls, no new rows in sync_runs
    day = db.session.scalars(select(SyncQuietDay).where(SyncQuietDay.mailbox_id == box.id)).one()
    assert day.day == utcnow().date() and day.imap_commands >= 2 * 3
    assert box.last_success_at > before and box.next_sync_at > utcnow() + timedelta(minutes=9)

    mail.put(box.address, from_="quinn@client.test", to=box.address, subject="Second")
    run = mail.sync(box, "scheduled")
    assert (run.trigger, run.status, run.logged, _runs(box), _quiet(box)) == ("scheduled", "succeeded", 1, 2, 2)
    assert mail.activities() == {("C-Q", "First"), ("C-Q", "Second")}

    mail.sync(box, "manual")  # a person asked: always a run, even with nothing new
    assert (_runs(box), _quiet(box)) == (3, 2)


def test_a_quiet_poll_costs_three_statements(app, mail, world):
    _rep, box = mail.rep_with_mailbox("lean")
    mail.sync(box)
    statements = []
    engine = db.engine

    def seen(conn, cursor, statement, *args):
        statements.append(statement.split()[0].upper())

    intervals = run_history.Intervals(10, 30)
    db.session.remove()
    event.listen(engine, "before_cursor_execute", seen)
    try:
        run_sync(box.id, trigger="scheduled", intervals=intervals)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    # The mailbox with its owner and checkpoints; its times; the day's count.
    assert statements == ["SELECT", "UPDATE", "INSERT"], statements
    assert _quiet(box) == 1


def test_a_mailbox_disconnected_during_a_quiet_poll_stays_disconnected(mail, world):
    _rep, box = mail.rep_with_mailbox("gone")
    mail.sync(box)
    loaded = db.session.get(Mailbox, box.id)
    from portal.accounts import state

    assert state.mark_polled(loaded, timedelta(minutes=10)) is True
    db.session.execute(Mailbox.__table__.update().where(Mailbox.id == box.id).values(state="disconnected",
                                                                                     next_sync_at=None))
    assert state.mark_polled(loaded, timedelta(minutes=10)) is False
    db.session.commit()
    db.session.expire_all()
    assert (db.session.get(Mailbox, box.id).state, db.session.get(Mailbox, box.id).next_sync_at) == \
        ("disconnected", None)


def test_old_runs_and_quiet_days_are_pruned_in_small_batches(app, world):
    owner = world.user("keeper@crm.test")
    box = Mailbox(user_id=owner.id, address="keeper@agency.test", state="active")
    db.session.add(box)
    db.session.commit()
    now = utcnow()
    old, recent = now - timedelta(days=91), now - timedelta(days=89)
    for status in ("succeeded", "failed", "succeeded"):
        db.session.add(SyncRun(mailbox_id=box.id, trigger="scheduled", status=status, started_at=old))
    db.session.add(SyncRun(mailbox_id=box.id, trigger="manual", status="running", started_at=old))  # still on
    db.session.add(SyncRun(mailbox_id=box.id, trigger="manual", status="succeeded", started_at=recent))
    db.session.add(SyncQuietDay(mailbox_id=box.id, day=old.date(), polls=70, first_at=old, last_at=old))
    db.session.add(SyncQuietDay(mailbox_id=box.id, day=recent.date(), polls=70, first_at=recent, last_at=recent))
    db.session.commit()

    assert run_history.prune(90, batch=2) == 3  # two runs and the old day
    assert run_history.prune(90, batch=2) == 1
    assert run_history.prune(90, batch=2) == 0
    kept = db.session.execute(select(SyncRun.status, SyncRun.started_at)).all()
    assert sorted(s for s, _ in kept) == ["running", "succeeded"]
    assert [d.day for d in run_history.quiet_days(box.id)] == [recent.date()]

    db.session.add(SyncRun(mailbox_id=box.id, trigger="scheduled", status="failed", started_at=old))
    db.session.commit()
    app.config["EIS_RUN_RETENTION_DAYS"] = 90
    assert Scheduler(app, "pruner").tick()["pruned"] == 1  # the scheduler prunes every tick


def test_a_batch_job_syncs_each_mailbox_and_a_broken_one_does_not_stop_the_others(mail, world, dovecot):
    world.customer("C-B", "berta@client.test")
    boxes = [mail.rep_with_mailbox(f"batch{i}")[1] for i in range(3)]
    for box in boxes:
        mail.sync(box)
        mail.put(box.address, from_="berta@client.test", to=box.address, subject=f"For {box.address}")
    dovecot.set_password(boxes[1].address, "changed-by-it")
    enqueue_sync_batch([b.id for b in boxes])
    mail.work()
    db.session.expire_all()
    states = [db.session.get(Mailbox, b.id).state for b in boxes]
    assert states == ["active", "problematic", "active"]
    assert {s for _, s in mail.activities()} == {f"For {boxes[0].address}", f"For {boxes[2].address}"}
    failed = db.session.scalars(select(SyncRun).where(SyncRun.mailbox_id == boxes[1].id)
                                .order_by(SyncRun.id.desc())).first()
    assert (failed.status, failed.error_class) == ("failed", "auth_failed")


def test_support_and_rep_pages_show_quiet_polls_among_the_runs(app, client, mail, world):
    rep, box = mail.rep_with_mailbox("shown")
    mail.sync(box)
    for _ in range(3):
        mail.sync(box, "scheduled")
    support = world.user("support-shown@crm.test", "support")
    world.login(support, client)
    html = client.get(f"/support/mailboxes/{box.id}").get_data(as_text=True)
    assert "3 quiet polls that day" in html and "kept 90 days" in html
    assert html.index("3 quiet polls that day") < html.index("run-succeeded")  # newest first
    reps_browser = app.test_client()
    world.login(rep, reps_browser)
    html = reps_browser.get(f"/mailboxes/{box.id}").get_data(as_text=True)
    assert "3 quiet checks that day: nothing new" in html
    api = world.api(support).get(f"/mailboxes/{box.id}").get_json()
    assert [d["polls"] for d in api["quiet_days"]] == [3] and len(api["runs"]) == 1


def test_a_worker_process_syncs_a_batch_some_at_a_time_each_once(app, mail, world, dovecot, worker_process):
    """A real `python worker.py` works a batch job: on PostgreSQL with threads (EIS_SYNC_THREADS),
    on SQLite one after another. Every mailbox's new mail is logged once; a mailbox whose
    password changed turns Problematic without stopping the others."""
    world.customer("C-T", "tereza@client.test")
    boxes = [mail.rep_with_mailbox(f"thread{i}")[1] for i in range(8)]
    for box in boxes:
        mail.sync(box)
        for n in range(2):
            mail.put(box.address, from_="tereza@client.test", to=box.address, subject=f"{n} for {box.address}")
    dovecot.set_password(boxes[3].address, "changed-by-it")
    db.session.expire_all()
    before = {b.id: db.session.get(Mailbox, b.id).last_sync_at for b in boxes}
    enqueue_sync_batch([b.id for b in boxes])
    worker = worker_process(EIS_SYNC_THREADS="3")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        db.session.expire_all()
        if all(db.session.get(Mailbox, b.id).last_sync_at > before[b.id] for b in boxes):
            break
        time.sleep(0.2)
    db.session.expire_all()
    states = [db.session.get(Mailbox, b.id).state for b in boxes]
    assert states == ["active"] * 3 + ["problematic"] + ["active"] * 4, worker.log_tail()
    logged = sorted(s for _, s in mail.activities())
    assert logged == sorted(f"{n} for {b.address}" for b in boxes if b is not boxes[3] for n in range(2))
