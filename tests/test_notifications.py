"""Telling the people who can fix it (issue 14, item 2): the owner of a mailbox that turns
Problematic is emailed once per incident, IT gets a daily digest, and each can turn them off.
The emails arrive at a real SMTP server (aiosmtpd) through the system account, and their
links open the portal's pages."""
import re
import smtplib
import time
from datetime import datetime, timedelta
from email import message_from_bytes
from email import policy as email_policy
from urllib.parse import quote, urlsplit

import pytest
from playwright.sync_api import expect
from rq.job import Job
from sqlalchemy import event, insert, select, update

from devservers import SmtpSink
from portal.accounts import linking, state
from portal.extensions import db
from portal.jobs.schedule import Scheduler
from portal.mail.errors import classify_exception, plain_words
from portal.models import Mailbox, MailboxStateChange, Notification
from portal.notify import config as notify_config
from portal.notify import deliver
from portal.notify.messages import OWNER_MUST_RECONNECT, Email
from portal.notify.sweep import digest_day, sweep
from portal.queue import get_redis
from portal.timeutil import utcnow

SYSTEM_LOGIN, SYSTEM_PASSWORD = "crm-notify@agency.test", "s3cret:pw/with@odd"
BASE_URL = "https://crm-mail.agency.test"


@pytest.fixture(scope="module")
def system_smtp():
    """The organisation's SMTP server, with the system account notifications go through."""
    with SmtpSink(users={SYSTEM_LOGIN: SYSTEM_PASSWORD}) as sink:
        yield sink


@pytest.fixture
def notifying(app, system_smtp):
    system_smtp.clear()
    app.config.update(
        EIS_NOTIFY_SMTP_URL=f"smtp://{quote(SYSTEM_LOGIN, safe='')}:{quote(SYSTEM_PASSWORD, safe='')}"
                            f"@127.0.0.1:{system_smtp.port}",
        EIS_NOTIFY_FROM="CRM email <crm-notify@agency.test>",
        EIS_BASE_URL=BASE_URL,
        EIS_NOTIFY_DIGEST_HOUR=0,
    )
    return system_smtp


class Received:
    def __init__(self, mail_from, rcpt_tos, raw):
        self.mail_from, self.rcpt_tos = mail_from, rcpt_tos
        self.msg = message_from_bytes(raw, policy=email_policy.default)
        self.subject = str(self.msg["Subject"])
        self.text = self.msg.get_body(("plain",)).get_content()
        self.html = self.msg.get_body(("html",)).get_content()

    def link(self, path_pattern: str) -> str:
        found = [u for u in re.findall(r"https?://\S+", self.text) if re.search(path_pattern, urlsplit(u).path)]
        assert found, f"no link to {path_pattern} in:\n{self.text}"
        assert f'href="{found[0].replace("&", "&amp;")}"' in self.html
        return found[0]


def received(sink) -> list[Received]:
    return [Received(*message) for message in sink.messages]


def break_by_password_change(mail, box) -> Mailbox:
    """The password is changed on the server: the next real sync is refused and the mailbox
    turns Problematic (auth_failed, a refusal: no threshold)."""
    mail.dovecot.set_password(box.address, "changed-on-the-server")
    run = mail.sync(box)
    mailbox = db.session.get(Mailbox, box.id)
    db.session.refresh(mailbox)
    assert (run.status, mailbox.state, mailbox.reason) == ("failed", "problematic", "auth_failed")
    return mailbox


def reconnect(mail, rep, box, password: str) -> None:
    mail.dovecot.set_password(box.address, password)
    linking.link_imap_mailbox(rep, mail.settings(box.address, password))
    db.session.commit()


def rows(kind=None) -> list[Notification]:
    query = select(Notification).order_by(Notification.id)
    if kind:
        query = query.where(Notification.kind == kind)
    return db.session.scalars(query).all()


def test_the_owner_is_emailed_once_when_a_real_sync_failure_makes_the_mailbox_problematic(
        app, mail, world, notifying):
    rep, box = mail.rep_with_mailbox("alena")
    assert mail.sync(box, "backfill").status == "succeeded"
    mailbox = break_by_password_change(mail, box)

    scheduler = Scheduler(app)
    scheduler.tick()  # the scheduler's sweep records the incident and queues the email on `default`
    mail.work()  # a real RQ worker runs it
    [email] = received(notifying)

    assert email.rcpt_tos == [rep.email]
    assert email.mail_from == "crm-notify@agency.test"
    assert ("PLAIN", SYSTEM_LOGIN) in notifying.logins or ("LOGIN", SYSTEM_LOGIN) in notifying.logins
    assert email.subject == f"Action needed: your email account {box.address} has stopped syncing"
    assert str(email.msg["Auto-Submitted"]) == "auto-generated"
    assert plain_words("auth_failed") in email.text
    assert "[AUTHENTICATIONFAILED] Authentication failed." in email.text  # the provider's words
    assert mailbox.detail in email.text
    assert "check that the password still works by signing in to webmail" in email.text  # the fix steps
    assert "Mailbox owner: reconnect the account: open the Reconnect link below and sign in again" in email.text
    link = email.link(r"/mailboxes/\d+/reconnect$")
    assert link == f"{BASE_URL}/mailboxes/{box.id}/reconnect"
    page = world.login(rep).get(urlsplit(link).path)  # the link, with the rep's session
    assert page.status_code == 200
    assert f"Reconnect {box.address}" in page.get_data(as_text=True)
    assert email.link(r"^/settings$") == f"{BASE_URL}/settings"

    for _ in range(3):  # more ticks, more sweeps, more workers: still one email for this incident
        scheduler.tick()
        sweep()
        mail.work()
    assert len(notifying.messages) == 1
    [row] = rows()
    incident = db.session.scalars(select(MailboxStateChange).where(MailboxStateChange.mailbox_id == box.id,
                                                                   MailboxStateChange.to_state == "problematic")).one()
    assert (row.status, row.user_id, row.state_change_id, row.attempts) == ("sent", rep.id, incident.id, 1)


def test_a_worker_process_configured_from_the_environment_sends_it(app, mail, notifying, worker_process):
    """`python worker.py` with EIS_NOTIFY_* in its environment, as an operator runs it."""
    rep, box = mail.rep_with_mailbox("jarmila")
    mail.sync(box, "backfill")
    break_by_password_change(mail, box)
    worker = worker_process()
    assert sweep()["queued"] == 1
    [(_from, to, _raw)] = notifying.wait_for(1, timeout=30)
    assert to == [rep.email], worker.log_tail()
    deadline = time.monotonic() + 10  # the worker commits "sent" just after the server took it
    while rows()[0].status == "pending" and time.monotonic() < deadline:
        db.session.rollback()
        time.sleep(0.05)
    assert rows()[0].status == "sent", worker.log_tail()


def test_the_providers_words_are_text_in_the_email_never_markup(mail, notifying):
    rep, box = mail.rep_with_mailbox("kvido")
    hostile = 'NO <img src=x onerror="alert(1)"> <a href="https://evil.test">Reconnect here</a>'
    state.mark_problematic(db.session.get(Mailbox, box.id), "auth_failed", hostile)
    db.session.commit()
    sweep()
    mail.work()
    [email] = received(notifying)
    assert hostile in email.text
    assert "<img" not in email.html and "evil.test\">" not in email.html
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in email.html
    assert re.findall(r'href="([^"]+)"', email.html) == [
        f"{BASE_URL}/mailboxes/{box.id}/reconnect", BASE_URL, f"{BASE_URL}/settings"]


def test_a_second_incident_after_a_reconnect_is_emailed_again(mail, notifying):
    rep, box = mail.rep_with_mailbox("bohus")
    mail.sync(box, "backfill")
    break_by_password_change(mail, box)
    sweep()
    mail.work()
    assert len(notifying.messages) == 1

    reconnect(mail, rep, box, "new-password-1")
    assert mail.sync(box).status == "succeeded"
    sweep()
    mail.work()
    assert len(notifying.messages) == 1  # working again: nothing to say

    break_by_password_change(mail, box)
    sweep()
    mail.work()
    sweep()
    mail.work()
    first, second = received(notifying)
    assert first.subject == second.subject and second.rcpt_tos == [rep.email]
    assert [r.status for r in rows()] == ["sent", "sent"]
    assert rows()[0].state_change_id != rows()[1].state_change_id


def test_a_mailbox_reconnected_before_the_sweep_or_the_sending_is_not_emailed(mail, notifying):
    rep, box = mail.rep_with_mailbox("cyril")
    mail.sync(box, "backfill")
    break_by_password_change(mail, box)
    reconnect(mail, rep, box, "fixed-1")  # fixed before the scheduler looked
    assert sweep()["incidents"] == 0
    assert rows() == []

    break_by_password_change(mail, box)
    assert sweep()["incidents"] == 1  # recorded and queued...
    reconnect(mail, rep, box, "fixed-2")  # ...but fixed before the worker sent it
    mail.work()
    assert notifying.messages == []
    [row] = rows()
    assert row.status == "skipped" and "no longer" in row.detail


def test_two_schedulers_sweeping_at_once_write_each_incident_once(mail, notifying):
    """Another scheduler writes one of the incidents between this sweep's read and its write:
    the unique key refuses the second row and the other incident is still written."""
    boxes = [mail.rep_with_mailbox(name)[1] for name in ("ota", "pavla")]
    for box in boxes:
        state.mark_problematic(db.session.get(Mailbox, box.id), "auth_failed", "[AUTHENTICATIONFAILED] x")
    db.session.commit()
    first = db.session.scalars(select(MailboxStateChange).where(MailboxStateChange.mailbox_id == boxes[0].id,
                                                                MailboxStateChange.to_state == "problematic")).one()
    values = {"kind": "mailbox_problematic", "dedupe_key": f"mailbox_problematic:{first.id}", "status": "pending",
              "user_id": db.session.get(Mailbox, boxes[0].id).user_id, "mailbox_id": boxes[0].id,
              "state_change_id": first.id, "attempts": 0, "created_at": utcnow()}

    def the_other_scheduler_commits_first(session, flush_context, instances):
        with db.engine.begin() as other:
            other.execute(insert(Notification).values(**values))

    event.listen(db.session, "before_flush", the_other_scheduler_commits_first, once=True)
    assert sweep()["incidents"] == 1  # the other one was theirs
    assert sorted(r.mailbox_id for r in rows()) == sorted(b.id for b in boxes)
    mail.work()
    assert sorted(r for m in received(notifying) for r in m.rcpt_tos) == \
        sorted(db.session.get(Mailbox, b.id).owner.email for b in boxes)


def test_transient_faults_below_the_threshold_send_nothing(mail, notifying):
    _rep, box = mail.rep_with_mailbox("dana")
    mail.sync(box, "backfill")
    mailbox = db.session.get(Mailbox, box.id)
    for _ in range(3):  # the server refused connections three times; the threshold is five
        state.record_failure(mailbox, classify_exception(ConnectionRefusedError(111, "Connection refused")))
        db.session.commit()
        sweep()
    assert (mailbox.state, mailbox.reason) == ("active", "server_unreachable")
    assert mail.sync(box).status == "succeeded"  # it recovers
    sweep()
    mail.work()
    assert rows() == [] and notifying.messages == []


def test_nothing_is_lost_or_doubled_when_the_queue_loses_the_job_or_the_smtp_server_hiccups(mail, notifying):
    _rep, box = mail.rep_with_mailbox("emil")
    mail.sync(box, "backfill")
    break_by_password_change(mail, box)
    assert sweep() == {"incidents": 1, "digests": 0, "queued": 1}
    get_redis().flushdb()  # Redis lost the queue (or the worker died with the job)
    assert sweep() == {"incidents": 0, "digests": 0, "queued": 1}  # the pending row is queued again

    notifying.fail_next(1)  # 451: try again later
    mail.work()
    assert notifying.messages == []
    [row] = rows()
    assert row.status == "pending" and row.detail.startswith("451")
    job = Job.fetch(f"notify-{row.id}", connection=get_redis())
    assert job.get_status() == "scheduled"  # RQ retries it later
    assert sweep()["queued"] == 0  # a live retry is not doubled

    job.delete()  # instead of waiting a minute for the retry: the sweep queues the pending row again
    assert sweep()["queued"] == 1
    mail.work()
    assert len(notifying.messages) == 1
    db.session.refresh(row)
    assert (row.status, row.attempts) == ("sent", 2)


def test_a_bug_while_sending_fails_the_job_at_its_last_attempt_and_is_not_queued_forever(
        mail, notifying, monkeypatch):
    _rep, box = mail.rep_with_mailbox("nora")
    state.mark_problematic(db.session.get(Mailbox, box.id), "auth_failed", "[AUTHENTICATIONFAILED]")
    db.session.commit()
    assert sweep()["queued"] == 1

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(deliver, "problematic_email", broken)
    [row] = rows()
    with pytest.raises(KeyError):
        deliver.deliver(row.id, last_attempt=False)
    db.session.refresh(row)
    assert row.status == "pending"  # RQ tries again
    with pytest.raises(KeyError):
        deliver.deliver(row.id, last_attempt=True)
    db.session.refresh(row)
    assert row.status == "failed" and "KeyError" in row.detail
    get_redis().flushdb()
    assert sweep()["queued"] == 0 and notifying.messages == []


def test_opting_out_on_your_settings_in_chromium_stops_the_emails(app, mail, person, live_server, notifying):
    app.config["EIS_BASE_URL"] = live_server
    rep, box = mail.rep_with_mailbox("filip")
    mail.sync(box, "backfill")
    person.sign_in(rep.email)
    person.page.get_by_role("link", name="Your settings").click()
    checkbox = person.page.get_by_label("Email me when one of my email accounts stops syncing")
    expect(checkbox).to_be_checked()
    person.audit("Your settings, with the notifications checkbox")
    checkbox.uncheck()
    person.button("Save").click()
    expect(person.flash()).to_contain_text("email notifications are off")
    expect(person.page.get_by_label("Email me when one of my email accounts stops syncing")).not_to_be_checked()

    break_by_password_change(mail, box)
    sweep()
    mail.work()
    assert notifying.messages == [] and rows() == []

    person.page.get_by_label("Email me when one of my email accounts stops syncing").check()
    person.button("Save").click()
    expect(person.flash()).to_contain_text("you get email notifications")
    db.session.expire_all()  # the browser's request changed the user: read it afresh, as each tick does
    sweep()  # turned on again while the incident lasts: told about it now
    mail.work()
    [email] = received(notifying)
    person.page.goto(email.link(r"/reconnect$"))  # the link in the email, in the rep's browser
    expect(person.page.get_by_role("heading", name=f"Reconnect {box.address}")).to_be_visible()
    expect(person.page.locator("main")).to_contain_text("[AUTHENTICATIONFAILED] Authentication failed.")


def _problematic_since(mailbox: Mailbox, reason: str, detail: str, hours_ago: float) -> None:
    """The mailbox turned Problematic (through the state machine) `hours_ago` hours ago."""
    state.mark_problematic(mailbox, reason, detail)
    db.session.commit()
    db.session.execute(update(MailboxStateChange).where(MailboxStateChange.mailbox_id == mailbox.id,
                                                        MailboxStateChange.to_state == "problematic")
                       .values(at=utcnow() - timedelta(hours=hours_ago)))
    db.session.commit()


def _microsoft_mailbox(world, owner_email: str, address: str) -> Mailbox:
    owner = world.user(owner_email, "rep")
    mailbox = Mailbox(user_id=owner.id, address=address, provider="microsoft", login=address)
    db.session.add(mailbox)
    db.session.flush()
    state.begin(mailbox, owner)
    db.session.commit()
    return mailbox


def test_it_gets_a_daily_digest_grouped_by_reason_with_what_it_can_do(app, mail, world, notifying):
    it = world.user("ivana.it@crm.test", "it", name="Ivana")
    world.user("otto.it@crm.test", "it", email_notifications=False)  # opted out
    _r1, box1 = mail.rep_with_mailbox("gita")
    _r2, box2 = mail.rep_with_mailbox("hugo")
    _r3, fresh = mail.rep_with_mailbox("iris")
    outlook = _microsoft_mailbox(world, "jan@crm.test", "jan@agency.test")
    refused = "[AUTHENTICATIONFAILED] Authentication failed."
    _problematic_since(db.session.get(Mailbox, box1.id), "auth_failed", refused, 30)
    _problematic_since(db.session.get(Mailbox, box2.id), "auth_failed", refused, 50)
    _problematic_since(outlook, "consent_missing", "AADSTS65001: The user or administrator has not consented "
                       "to use the application.", 26)
    _problematic_since(db.session.get(Mailbox, fresh.id), "auth_failed", refused, 2)  # not over 24 hours yet

    now = utcnow()
    done = sweep(now)
    assert done["digests"] == 1  # Ivana only: Otto turned notifications off
    mail.work()
    digests = [e for e in received(notifying) if e.rcpt_tos == [it.email]]
    [digest] = digests
    assert digest.subject == "Daily digest: 3 email accounts Problematic for over 24 hours"
    text = digest.text
    auth_at, consent_at = text.index(plain_words("auth_failed")), text.index(plain_words("consent_missing"))
    assert auth_at < consent_at  # the bigger group first
    auth_group, consent_group = text[auth_at:consent_at], text[consent_at:]
    assert "(2 accounts; reason auth_failed)" in auth_group
    assert box1.address in auth_group and box2.address in auth_group and fresh.address not in text
    assert OWNER_MUST_RECONNECT in auth_group
    assert "(1 account; reason consent_missing)" in consent_group and outlook.address in consent_group
    assert "IT (Microsoft 365): grant the CRM application these permissions" in consent_group
    assert "Google Workspace" not in consent_group  # no Google mailbox in the group
    assert "AADSTS65001" in consent_group  # the provider's words
    link = digest.link(r"^/it/accounts$")
    assert link == f"{BASE_URL}/it/accounts?state=problematic"
    client = world.login(it)
    page = client.get(urlsplit(link).path + "?" + urlsplit(link).query)
    assert page.status_code == 200 and outlook.address in page.get_data(as_text=True)
    assert not any(e.rcpt_tos == ["otto.it@crm.test"] for e in received(notifying))

    # Once a day: later the same day nothing more; the next day (still Problematic) again.
    assert sweep(now + timedelta(seconds=1))["digests"] == 0  # the same day (30 min could cross midnight)
    mail.work()
    assert len([e for e in received(notifying) if e.rcpt_tos == [it.email]]) == 1
    assert sweep(now + timedelta(days=1))["digests"] == 1
    mail.work()
    assert len([e for e in received(notifying) if e.rcpt_tos == [it.email]]) == 2
    assert [r.day for r in rows("it_digest")] == [digest_day(now), digest_day(now + timedelta(days=1))]


def test_no_digest_when_nothing_has_been_problematic_for_over_24_hours(mail, world, notifying):
    world.user("it@crm.test", "it")
    _rep, box = mail.rep_with_mailbox("karel")
    _problematic_since(db.session.get(Mailbox, box.id), "auth_failed", "[AUTHENTICATIONFAILED]", 23)
    assert sweep()["digests"] == 0
    mail.work()
    assert rows("it_digest") == []
    assert not any(e.rcpt_tos == ["it@crm.test"] for e in received(notifying))


def test_the_digest_waits_for_its_hour_in_the_organisations_time_zone(app, mail, world, notifying):
    app.config.update(EIS_NOTIFY_DIGEST_HOUR=8, EIS_TIME_ZONE="Europe/Prague")
    world.user("it@crm.test", "it")
    _rep, box = mail.rep_with_mailbox("lada")
    _problematic_since(db.session.get(Mailbox, box.id), "auth_failed", "[AUTHENTICATIONFAILED]", 48)
    assert sweep(datetime(2026, 12, 7, 6, 30))["digests"] == 0  # 07:30 in Prague
    assert sweep(datetime(2026, 12, 7, 7, 0))["digests"] == 1  # 08:00 in Prague
    assert rows("it_digest")[0].day == "2026-12-07"


def test_a_refused_system_account_fails_the_notification_without_showing_its_password(
        app, mail, world, notifying, caplog):
    app.config["EIS_NOTIFY_SMTP_URL"] = f"smtp://{SYSTEM_LOGIN}:wrong-password-123@127.0.0.1:{notifying.port}"
    _rep, box = mail.rep_with_mailbox("milan")
    mail.sync(box, "backfill")
    break_by_password_change(mail, box)
    sweep()
    mail.work()
    [row] = rows()
    assert row.status == "failed" and row.detail.startswith("535")
    assert "wrong-password-123" not in caplog.text and "wrong-password-123" not in row.detail
    assert notifying.messages == []
    page = world.login(world.user("admin@crm.test", "admin")).get("/admin/health").get_data(as_text=True)
    assert "The last one could not be sent: 535" in page and "wrong-password-123" not in page


def test_the_health_page_says_whether_notifications_are_on_never_with_the_password(app, world, notifying):
    admin = world.user("admin@crm.test", "admin")
    client = world.login(admin)
    page = client.get("/admin/health").get_data(as_text=True)
    assert f"sends notifications through 127.0.0.1:{notifying.port} as crm-notify@agency.test" in page
    assert quote(SYSTEM_PASSWORD, safe="") not in page and SYSTEM_PASSWORD not in page

    app.config["EIS_NOTIFY_SMTP_URL"] = None
    page = client.get("/admin/health").get_data(as_text=True)
    assert "notifications are off" in page and "EIS_NOTIFY_SMTP_URL is not set" in page
    assert sweep() == {"incidents": 0, "digests": 0, "queued": 0}


@pytest.mark.parametrize(("url", "expected"), [
    ("smtp+starttls://u%40x.test:p%3Aw@mail.example.com:2587",
     ("mail.example.com", 2587, "starttls", "u@x.test", "p:w")),
    ("smtp+starttls://user:pw@mail.example.com", ("mail.example.com", 587, "starttls", "user", "pw")),
    ("smtps://user:pw@mail.example.com", ("mail.example.com", 465, "ssl", "user", "pw")),
    ("smtp://relay.internal", ("relay.internal", 25, "none", None, None)),
])
def test_the_smtp_url_forms(url, expected):
    account = notify_config.parse_smtp_url(url)
    assert (account.host, account.port, account.security, account.login, account.password) == expected
    assert account.password is None or account.password not in repr(account)


@pytest.mark.parametrize("url", ["http://user:topsecret@mail.example.com", "smtp://user:topsecret@:25",
                                 "smtp://user:topsecret@mail.example.com:99999"])
def test_a_bad_smtp_url_is_refused_in_words_without_its_password(url):
    with pytest.raises(notify_config.NotifyConfigError) as refused:
        notify_config.parse_smtp_url(url)
    assert "topsecret" not in str(refused.value)


def test_smtp_starttls_in_the_url_is_required_never_skipped(app, notifying):
    """A server that offers no STARTTLS is refused: the password is not sent in plain text."""
    app.config["EIS_NOTIFY_SMTP_URL"] = f"smtp+starttls://{SYSTEM_LOGIN}:x@127.0.0.1:{notifying.port}"
    with pytest.raises(smtplib.SMTPNotSupportedError):  # the test server offers no STARTTLS
        deliver.send("someone@crm.test", Email(subject="s", text="t", html="<p>t</p>"))
    assert notifying.messages == []
