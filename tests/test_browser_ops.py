"""An admin watches health in Chromium. (Support's, IT's and the
admin's journeys are in tests/test_journeys_ops.py.)"""
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.sync_api import expect

from portal.extensions import db
from portal.timeutil import utcnow

SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


@pytest.fixture
def shoot(page):
    page.set_viewport_size({"width": 1280, "height": 900})

    def save(name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / name), full_page=True)

    return save


@pytest.fixture
def sales_team(mail, world):
    """Petra and Tomáš with synced mailboxes and a little customer mail each."""
    world.customer("C-DVORAK", "dvorak@client.test", name="Karel Dvořák")
    world.customer("C-NOVAK", "jiri.novak@client.test", name="Jiří Novák")
    petra, petra_box = mail.rep_with_mailbox("petra")
    tomas, tomas_box = mail.rep_with_mailbox("tomas")
    mail.put(petra_box.address, from_="dvorak@client.test", to=petra_box.address, subject="Offer for flat 12")
    mail.put(tomas_box.address, from_="Jiří Novák <jiri.novak@client.test>", to=tomas_box.address,
             subject="Viewing on Saturday")
    mail.put(tomas_box.address, from_=petra_box.address, to=tomas_box.address, cc="dvorak@client.test",
             subject="Dvořák wants a discount")
    for box in (petra_box, tomas_box):
        assert mail.sync(box, "backfill").status == "succeeded"
    return petra_box, tomas_box


def test_admin_watches_health(mail, world, sales_team, signed_in_page, live_server, shoot):
    """(IT's review of the accounts, with OAuth scopes and token health, is a journey in
    tests/test_journeys_ops.py.)"""
    petra_box, tomas_box = sales_team
    now = utcnow()
    from rq import SimpleWorker, Worker

    from portal.models import SyncRun
    from portal.queue import enqueue_sync, get_queue, get_redis

    # Something to see: a sync waiting, a job that failed, a run whose worker was lost, a worker.
    stale = world.app.config["EIS_RUN_STALE_SECONDS"]
    db.session.add(SyncRun(mailbox_id=tomas_box.id, trigger="scheduled", status="running", phase="new mail in INBOX",
                           started_at=now - timedelta(seconds=stale * 3),
                           heartbeat_at=now - timedelta(seconds=stale * 2)))
    db.session.commit()
    get_queue("default").enqueue("tests.test_pages_ops._failing_job", job_id="nightly-report-7", failure_ttl=600)
    SimpleWorker([get_queue("default")], connection=get_redis()).work(burst=True)
    enqueue_sync(petra_box.id, "manual")
    worker = Worker([get_queue(q) for q in ("send", "sync", "default")], connection=get_redis(), name="worker-1")
    worker.register_birth()
    try:
        page = signed_in_page(world.user("ada@crm.test", "admin"))
        page.goto(live_server + "/admin/health")
        expect(page.locator("[data-queue=sync] td").nth(1)).to_have_text("1")
        expect(page.locator("[data-metric=stuck] .metric-n")).to_have_text("1")
        expect(page.locator("#health")).to_contain_text("RuntimeError: the database went away")
        expect(page.locator("#health")).to_contain_text("worker-1")
        expect(page.locator("#health")).to_have_attribute("hx-trigger", "every 10s")
        shoot("admin-health.png")
    finally:
        worker.register_death()
    db.session.expire_all()
    mail.work()
    # The page refreshes itself: the queued sync is gone within one refresh.
    expect(page.locator("[data-queue=sync] td").nth(1)).to_have_text("0", timeout=15_000)
