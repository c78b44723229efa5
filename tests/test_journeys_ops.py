"""Support, IT, admins and everyone, end to end in Chromium against real parts: the portal
over HTTP, a real `python worker.py` process, Dovecot, Redis and the database. Each journey
goes through visible labels and roles, as a person does; the README's screenshots of these
pages are taken here.
"""
import csv
import io
import time
from datetime import timedelta

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from devservers import OUTLOOK
from portal.extensions import db
from portal.models import Mailbox, SyncRun
from portal.queue import enqueue_sync
from portal.timeutil import utcnow
from tests.journeys import SYNC_SECONDS

TIMEOUT = SYNC_SECONDS * 1000


def wait_for(what, timeout: float = SYNC_SECONDS):
    """Until what() is true (the worker process works in the background)."""
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {timeout} s: {what.__doc__ or what}")
        time.sleep(0.1)
        db.session.expire_all()


def synced(box: Mailbox, trigger: str = "manual") -> SyncRun:
    """Queue a sync and wait for the worker process to finish it."""
    before = db.session.scalar(select(SyncRun.id).where(SyncRun.mailbox_id == box.id)
                               .order_by(SyncRun.id.desc()).limit(1)) or 0
    enqueue_sync(box.id, trigger)

    def finished():
        run = db.session.scalars(select(SyncRun).where(SyncRun.mailbox_id == box.id, SyncRun.id > before,
                                                       SyncRun.status != "running")).first()
        return run is not None
    wait_for(finished)
    return db.session.scalars(select(SyncRun).where(SyncRun.mailbox_id == box.id).order_by(SyncRun.id.desc())).first()


@pytest.fixture
def sales_team(app, mail, world, worker_process):
    """Petra and Tomáš with synced mailboxes and a little customer mail each; a worker running."""
    app.config["EIS_LIVE_POLL_SECONDS"] = 0.5
    worker_process()
    world.customer("C-DVORAK", "karel.dvorak@klient.test", name="Karel Dvořák")
    world.customer("C-NOVAK", "jiri.novak@klient.test", name="Jiří Novák")
    petra, petra_box = mail.rep_with_mailbox("petra")
    tomas, tomas_box = mail.rep_with_mailbox("tomas")
    mail.put(petra_box.address, from_="Karel Dvořák <karel.dvorak@klient.test>", to=petra_box.address,
             subject="Nabídka na byt 12")
    mail.put(tomas_box.address, from_="Jiří Novák <jiri.novak@klient.test>", to=tomas_box.address,
             subject="Prohlídka v sobotu")
    mail.put(tomas_box.address, from_=petra_box.address, to=tomas_box.address, cc="karel.dvorak@klient.test",
             subject="Dvořák chce slevu")
    for box in (petra_box, tomas_box):
        assert synced(box, "backfill").status == "succeeded"
    return petra_box, tomas_box


def break_password(mail, box) -> None:
    """IT changes the password on the server: the next sync is refused, the mailbox turns Problematic."""
    mail.dovecot.set_password(box.address, "changed-on-the-server")
    run = synced(box)
    mailbox = db.session.get(Mailbox, box.id)
    db.session.refresh(mailbox)
    assert (run.status, mailbox.state) == ("failed", "problematic"), (run.error_class, run.error_detail)


def test_support_finds_the_problematic_mailbox_and_asks_why_an_email_was_not_logged(
        mail, world, sales_team, person):
    petra_box, tomas_box = sales_team
    break_password(mail, petra_box)
    page = person.page
    person.sign_in(world.user("sam@crm.test", "support", name="Sam").email)

    person.open("Mailboxes")
    rows = page.get_by_role("table").get_by_role("row")
    expect(rows.nth(1)).to_contain_text(petra_box.address)  # Problematic first
    expect(rows.nth(1)).to_contain_text("Problematic")
    expect(rows.nth(1)).to_contain_text("auth_failed")
    person.audit("Support: mailboxes")
    person.shoot("support-mailboxes.png")

    person.link(petra_box.address).click()
    expect(page.get_by_role("heading", name=petra_box.address, level=1)).to_be_visible()
    problem = page.locator("section.problem")
    expect(problem).to_contain_text("The mail server rejected the password or sign-in.")
    expect(problem).to_contain_text("[AUTHENTICATIONFAILED] Authentication failed.")
    person.audit("Support: a Problematic mailbox")

    # Tomáš asks why Petra's note about Dvořák is not on Dvořák's Activities.
    person.open("Mailboxes")
    page.get_by_role("searchbox", name="Address").fill("tomas")
    expect(page.get_by_role("table").get_by_role("row")).to_have_count(2)
    person.link(tomas_box.address).click()
    why = page.locator("#why")
    why.get_by_role("searchbox", name="Find an email").fill("slevu")
    person.button("Check", why).click()
    check = page.locator("#why-result details.why-check")
    expect(check).to_have_count(1)
    expect(check.locator("[data-rule=internal]")).to_have_class("verdict fail")
    expect(check.locator("[data-rule=internal]")).to_contain_text(petra_box.address)
    expect(check).to_contain_text("Karel Dvořák")
    expect(check).to_contain_text("nothing of this email is stored")
    check.locator("summary").first.click()
    person.audit("Support: why an email was not logged")
    person.shoot("support-mailbox.png")


def test_it_reviews_the_connected_accounts_and_downloads_them_as_csv(mail, world, sales_team, person):
    petra_box, tomas_box = sales_team
    break_password(mail, tomas_box)
    now = utcnow()
    lucie = world.user("lucie@crm.test", "rep", name="Lucie Nováková")
    db.session.add_all([  # OAuth accounts as they stand after months (their flows are the rep's journeys)
        Mailbox(user_id=lucie.id, address="lucie@contoso.test", provider="microsoft", state="active",
                connected_by_id=lucie.id, connected_at=now - timedelta(days=12),
                scopes_granted=[OUTLOOK + "IMAP.AccessAsUser.All", "openid", "email", "profile", "offline_access"],
                token_refreshed_at=now - timedelta(minutes=20), token_expires_at=now + timedelta(minutes=40)),
        Mailbox(user_id=lucie.id, address="lucie.novak@gmail.test", provider="google", state="problematic",
                reason="token_revoked", connected_by_id=lucie.id, connected_at=now - timedelta(days=40),
                scopes_granted=["https://mail.google.com/", "openid", "email", "profile"],
                token_refreshed_at=now - timedelta(days=2), token_expires_at=now - timedelta(days=2),
                token_refresh_failures=4),
    ])
    db.session.commit()
    page = person.page
    person.sign_in(world.user("ivan@crm.test", "it", name="Ivan").email)

    person.open("Connected accounts")
    table = page.get_by_role("table")
    expect(table.get_by_role("row", name=petra_box.address)).to_contain_text("password (no OAuth scopes)")
    expect(table.get_by_role("row", name=tomas_box.address)).to_contain_text("Problematic")
    expect(table.get_by_role("row", name="lucie@contoso.test").locator(".scope-missing")).to_have_text(["SMTP.Send"])
    expect(table.get_by_role("row", name="lucie.novak@gmail.test")).to_contain_text("4 failed refreshes in a row")
    person.audit("IT: connected accounts")
    person.shoot("it-accounts.png")

    with page.expect_download() as download:
        person.link("Export all as CSV").click()
    assert download.value.suggested_filename.startswith("connected-accounts-")
    rows = list(csv.DictReader(io.StringIO(open(download.value.path(), encoding="utf-8").read())))
    by_address = {r["address"]: r for r in rows}
    assert set(by_address) == {petra_box.address, tomas_box.address, "lucie@contoso.test", "lucie.novak@gmail.test"}
    assert by_address["lucie@contoso.test"]["scopes_missing"] == "SMTP.Send"
    assert by_address[petra_box.address]["state"] == "active"
    assert (by_address[tomas_box.address]["state"], by_address[tomas_box.address]["reason"]) == \
        ("problematic", "auth_failed")
    assert by_address[petra_box.address]["owner_email"].startswith("petra-")
    assert by_address[petra_box.address]["imap_host"] == "127.0.0.1"
    text = open(download.value.path(), encoding="utf-8").read()
    assert "imap-pass-1" not in text  # no secret is ever part of it


def test_admin_resyncs_every_problematic_mailbox_once_the_cause_is_fixed(mail, world, sales_team, person):
    petra_box, tomas_box = sales_team
    for box in (petra_box, tomas_box):
        break_password(mail, box)
    for box in (petra_box, tomas_box):  # IT fixes the cause on the server
        mail.dovecot.set_password(box.address, "imap-pass-1")
    page = person.page
    person.sign_in(world.user("ada@crm.test", "admin", name="Ada").email)

    person.open("Admin")
    page.get_by_role("navigation", name="Admin").get_by_role("link", name="Mailboxes & resync").click()
    person.link("Resync all 2 Problematic…").click()
    expect(page.get_by_role("heading", name="Resync 2 mailboxes?")).to_be_visible()
    expect(page.get_by_role("table")).to_contain_text(petra_box.address)
    expect(page.get_by_role("table")).to_contain_text(tomas_box.address)
    person.audit("Admin: resync confirm")
    person.button("Yes, resync 2").click()
    expect(person.flash()).to_contain_text("Resync asked for 2 mailboxes.")
    person.audit("Admin: mailboxes after a resync")

    wait_for(lambda: {db.session.get(Mailbox, b.id).state for b in (petra_box, tomas_box)} == {"active"})
    page.reload()
    expect(page.locator(".resync-all")).to_contain_text("No mailbox is Problematic.")
    person.link("2 active").click()
    for box in (petra_box, tomas_box):
        expect(page.get_by_role("row", name=box.address)).to_contain_text("Active")


@pytest.mark.parametrize("role, pages", [
    ("rep", ["/mailboxes", "/customers"]),
    ("support", ["/support/mailboxes"]),
    ("it", ["/it/accounts", "/it/audit"]),
    ("admin", ["/admin/users", "/admin/health"]),
])
def test_everyone_signs_out_and_their_pages_are_closed_to_them(world, person, role, pages):
    user = world.user(f"{role}@crm.test", role)
    person.sign_in(user.email)
    for path in pages:
        person.go(path)
        expect(person.page.get_by_role("button", name="Sign out")).to_be_visible()
        person.audit(f"{role}: {path}")
    person.sign_out()
    expect(person.flash()).to_contain_text("You are signed out.")
    for path in pages:
        person.go(path)
        expect(person.page.get_by_role("heading", name="Sign in")).to_be_visible()
        assert "/login" in person.page.url
    person.audit("Sign in, signed out")
    person.page.go_back()  # the browser's history shows no signed-in page either
    expect(person.page.get_by_role("heading", name="Sign in")).to_be_visible()
