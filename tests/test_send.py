"""Sending email to a customer from the CRM, against a real SMTP server (aiosmtpd) and the
session's Dovecot for the copy in Sent; the send queue worked by a real RQ worker.

The seed's "Why I can't send an email?" is the list of preconditions: each has its own
message, in the API and in the form, and none of them sends anything.
"""
import base64
import email
import io
import email.policy
import re
import time

import pytest
from rq import SimpleWorker

from devservers import SmtpSink
from portal.extensions import db
from portal.models import Activity, Email, EmailSource, Mailbox, MailboxStateChange, OutgoingEmail
from portal.queue import QUEUES, get_queue, get_redis, send_job_id
from tests.factories import csrf_from


def everyone(status):
    return {"rep": status, "support": status, "it": status, "admin": status}


ROUTE_ROLE_TABLE = [
    ("GET", "/customers/C-1/emails/new", None, everyone(200)),
    ("POST", "/customers/C-1/emails", {"subject": "Hi", "body": "Hello"}, everyone(422)),  # no mailbox
    ("GET", "/outgoing-emails/999999", None, everyone(404)),
    ("POST", "/api/v1/customers/C-1/emails", {"subject": "Hi", "body": "Hello"}, everyone(422)),
    ("GET", "/api/v1/outgoing-emails/999999", None, everyone(404)),
]

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

SUBJECT = "Nabídka bytu 3+kk – prohlídka v sobotu"
BODY = "Dobrý den pane Nováku,\nposílám nabídku <b>bytu</b> & smlouvu.\n\nS pozdravem\nPetra Dvořáková"
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40
SMTP_PASSWORD = "imap-pass-1"


@pytest.fixture(scope="module")
def smtp_server():
    with SmtpSink() as server:
        yield server


@pytest.fixture
def sink(smtp_server, app):
    smtp_server.clear()
    smtp_server.users.clear()
    smtp_server.token_checker = lambda user, token: False
    app.config["EIS_SEND_RETRY_INTERVALS"] = [1, 1, 1]
    return smtp_server


@pytest.fixture
def team(mail, world, sink):
    """Petra (a rep) with an IMAP mailbox on Dovecot that sends through the SMTP sink, and customers."""
    rep, box = mail.rep_with_mailbox("petra")
    rep.name = "Petra Dvořáková"
    use_sink(box, sink)
    world.customer("C-NOVAK", "jiri.novak@client.test", name="Jiří Novák")
    world.customer("C-NONE", None, name="Karel Bez Adresy")
    return rep, box


def use_sink(box, sink, password=SMTP_PASSWORD):
    box.smtp_host, box.smtp_port, box.smtp_security = "127.0.0.1", sink.port, "none"
    sink.users[box.address] = password
    db.session.commit()


def work(scheduler=False):
    """Run every queued job with a real RQ worker; with the scheduler, due retries first."""
    SimpleWorker([get_queue(q) for q in QUEUES], connection=get_redis()).work(burst=True, with_scheduler=scheduler)
    db.session.expire_all()


def payload(box, **over):
    return {"mailbox_id": box.id, "subject": SUBJECT, "body": BODY, **over}


def outgoing_rows():
    return db.session.query(OutgoingEmail).all()


def received(sink, index=0):
    mail_from, rcpt_tos, raw = sink.messages[index]
    return mail_from, rcpt_tos, raw, email.message_from_bytes(raw, policy=email.policy.default)


# --- sending, end to end ---------------------------------------------------------------------


def test_email_is_logged_at_once_queued_then_sent_as_typed(team, world, sink):
    rep, box = team
    api = world.api(rep)
    r = api.post("/customers/C-NOVAK/emails", json=payload(
        box, cc=["Jana.Novakova@client.test", "Ředitel <reditel@client.test>"],
        attachments=[{"filename": "smlouva-č.1.pdf", "content_type": "application/pdf",
                      "content_base64": base64.b64encode(PDF).decode()}]))
    assert r.status_code == 202, r.json
    assert r.json["state"] == "queued" and r.json["attempts"] == 0
    message_id = r.json["message_id"]
    assert re.fullmatch(r"<[^@<>]+@agency\.test>", message_id)  # the mailbox's domain

    # Logged on the customer at once, before anything was sent.
    assert sink.messages == []
    activities = api.get("/customers/C-NOVAK/activities").json["activities"]
    assert len(activities) == 1
    logged = activities[0]
    assert logged["direction"] == "out" and logged["mailbox_id"] == box.id
    assert logged["message_id"] == message_id and logged["subject"] == SUBJECT
    assert logged["to"] == ["jiri.novak@client.test"]
    assert logged["cc"] == ["jana.novakova@client.test", "reditel@client.test"]
    assert logged["outgoing"]["state"] == "queued"
    assert logged["attachments"] == [{"filename": "smlouva-č.1.pdf", "content_type": "application/pdf",
                                      "size": len(PDF)}]

    work()

    outgoing = api.get(f"/outgoing-emails/{r.json['id']}").json
    assert outgoing["state"] == "sent" and outgoing["sent_at"] and outgoing["attempts"] == 1
    assert api.get("/customers/C-NOVAK/activities").json["activities"][0]["outgoing"]["state"] == "sent"

    assert len(sink.messages) == 1
    mail_from, rcpt_tos, raw, msg = received(sink)
    assert mail_from == box.address
    assert rcpt_tos == ["jiri.novak@client.test", "jana.novakova@client.test", "reditel@client.test"]
    assert raw.isascii()  # 7-bit on the wire: encoded words, quoted-printable/base64 bodies
    assert msg["From"].addresses[0].display_name == "Petra Dvořáková"
    assert msg["From"].addresses[0].addr_spec == box.address
    assert msg["To"].addresses[0].display_name == "Jiří Novák"
    assert msg["To"].addresses[0].addr_spec == "jiri.novak@client.test"
    assert [a.addr_spec for a in msg["Cc"].addresses] == ["jana.novakova@client.test", "reditel@client.test"]
    assert msg["Cc"].addresses[1].display_name == "Ředitel"
    assert str(msg["Subject"]) == SUBJECT
    assert msg["Message-ID"] == message_id and msg["Date"]

    assert msg.get_content_type() == "multipart/mixed"
    alternative, attachment = msg.get_payload()
    assert alternative.get_content_type() == "multipart/alternative"
    text, html = alternative.get_payload()
    assert text.get_content_type() == "text/plain" and text.get_content_charset() == "utf-8"
    assert text.get_content().replace("\r\n", "\n") == BODY + "\n"
    assert html.get_content_type() == "text/html"
    html_text = html.get_content()
    # The HTML is made from the typed text: escaped, never the user's own markup.
    assert "<b>" not in html_text and "&lt;b&gt;bytu&lt;/b&gt; &amp; smlouvu" in html_text
    assert "<p>Dobrý den pane Nováku,<br>" in html_text and "<p>S pozdravem<br>" in html_text
    assert attachment.get_filename() == "smlouva-č.1.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == PDF


def test_generic_imap_copy_in_sent_is_recognised_by_message_id_when_synced(team, world, sink, mail, dovecot):
    rep, box = team
    r = world.api(rep).post("/customers/C-NOVAK/emails", json=payload(box))
    message_id = r.json["message_id"]
    work()

    # The server does not save sent mail itself: the copy is APPENDed to \Sent, seen.
    client = dovecot.client(box.address)
    try:
        client.select_folder("Sent", readonly=True)
        uids = client.search(["HEADER", "Message-ID", message_id])
        assert len(uids) == 1
        assert b"\\Seen" in client.get_flags(uids)[uids[0]]
        copy = client.fetch(uids, [b"BODY.PEEK[]"])[uids[0]][b"BODY[]"]
    finally:
        client.logout()
    assert copy.replace(b"\r\n", b"\n") == sink.messages[0][2].replace(b"\r\n", b"\n")

    run = mail.sync(box)
    assert run.status == "succeeded", run.error_detail
    assert (run.logged, run.duplicates) == (0, 1)
    assert mail.email_count() == 1
    assert mail.activity_rows() == [("C-NOVAK", SUBJECT)]
    source = db.session.query(EmailSource).one()
    assert (source.mailbox_id, source.folder) == (box.id, "Sent")
    assert db.session.query(Email).one().dedupe_key == message_id.lower()


def test_email_to_a_deal_customer_with_an_additional_customer_in_copy_is_logged_on_both(team, world, sink):
    rep, box = team
    world.customer("C-NOVAKOVA", "jana.novakova@client.test", name="Jana Nováková")
    world.deal("D-FLAT", "C-NOVAK", "C-NOVAKOVA")
    r = world.api(rep).post("/customers/C-NOVAK/emails", json=payload(box, cc="jana.novakova@client.test"))
    assert r.status_code == 202
    rows = {(a.customer.external_id, a.matched_field, a.direction) for a in db.session.query(Activity)}
    assert rows == {("C-NOVAK", "to", "out"), ("C-NOVAKOVA", "cc", "out")}


# --- preconditions: each its own message, none sends anything -----------------------------------


def own_mailbox(world, user, address, state="active", reason=None):
    """A mailbox row without IMAP: only the preconditions matter here."""
    box = Mailbox(user_id=user.id, address=address, provider="imap", state=state, reason=reason,
                  imap_host="127.0.0.1", imap_port=1, imap_security="none",
                  smtp_host="127.0.0.1", smtp_port=1, smtp_security="none")
    db.session.add(box)
    db.session.commit()
    return box


@pytest.fixture
def cases(world, sink):
    """Each precondition of the seed: (name, user, customer, body over, status, code, words in the message)."""
    world.customer("C-NOVAK", "jiri.novak@client.test", name="Jiří Novák")
    world.customer("C-NONE", None, name="Karel Bez Adresy")
    rep = world.user("petra@crm.test", "rep", name="Petra")
    box = own_mailbox(world, rep, "petra@agency.test")
    gone = own_mailbox(world, rep, "old@agency.test", state="disconnected")
    broken = own_mailbox(world, rep, "broken@agency.test", state="problematic", reason="auth_failed")
    receive_only = own_mailbox(world, rep, "receive@agency.test")
    receive_only.smtp_host = None
    colleague = world.user("tomas@crm.test", "rep")
    theirs = own_mailbox(world, colleague, "tomas@agency.test")
    no_permission = world.user("nopermission@crm.test", "rep", can_see_activities=False)
    own_mailbox(world, no_permission, "np@agency.test")
    no_mailbox = world.user("nomailbox@crm.test", "rep")
    own_mailbox(world, no_mailbox, "was@agency.test", state="disconnected")  # a disconnected one is none
    db.session.commit()
    big = base64.b64encode(b"x" * (1024 * 1024 + 1)).decode()
    return [
        ("activities", no_permission, "C-NOVAK", {}, 403, "activities_not_permitted",
         ["Activities", "administrator"]),
        ("unknown customer", rep, "C-NOBODY", {}, 404, "not_found", ["C-NOBODY"]),
        ("no mailbox", no_mailbox, "C-NOVAK", {}, 422, "no_mailbox", ["no email account connected", "/mailboxes"]),
        ("not own", rep, "C-NOVAK", {"mailbox_id": theirs.id}, 404, "mailbox_not_found", ["not one of yours"]),
        ("disconnected", rep, "C-NOVAK", {"mailbox_id": gone.id}, 409, "mailbox_disconnected",
         ["old@agency.test", "disconnected", "/mailboxes"]),
        ("problematic", rep, "C-NOVAK", {"mailbox_id": broken.id}, 409, "mailbox_problematic",
         ["broken@agency.test", "Problematic", "rejected the password", "/mailboxes", "Reconnect"]),
        ("no smtp", rep, "C-NOVAK", {"mailbox_id": receive_only.id}, 422, "mailbox_cannot_send", ["SMTP"]),
        ("no customer email", rep, "C-NONE", {}, 422, "customer_has_no_email",
         ["Karel Bez Adresy has no email address", "Customer details"]),
        ("subject", rep, "C-NOVAK", {"subject": "  "}, 422, "subject_missing", ["subject"]),
        ("body", rep, "C-NOVAK", {"body": " \n\t "}, 422, "body_empty", ["body is empty"]),
        ("cc", rep, "C-NOVAK", {"cc": "jana@client.test, not-an-address"}, 422, "invalid_cc",
         ["'not-an-address'", "not a valid email address"]),
        ("attachments", rep, "C-NOVAK", {"attachments": [{"filename": "big.bin", "content_base64": big}]}, 413,
         "attachment_too_large", ["at most 1 MB", "1.0 MB"]),
    ], box


def assert_nothing_sent(sink):
    work()
    assert sink.messages == [] and sink.logins == []
    assert outgoing_rows() == [] and db.session.query(Email).count() == 0
    assert db.session.query(Activity).count() == 0


def test_each_precondition_fails_with_its_own_message_in_the_api(app, world, cases, sink):
    app.config["EIS_SEND_MAX_ATTACHMENT_BYTES"] = 1024 * 1024
    table, box = cases
    for name, user, customer, over, status, code, words in table:
        api = world.api(user)
        r = api.post(f"/customers/{customer}/emails", json={"mailbox_id": box.id, "subject": "Nabídka",
                                                              "body": "Dobrý den", **over})
        assert (r.status_code, r.json["error"]) == (status, code), (name, r.json)
        for word in words:
            assert word in r.json["message"], (name, word, r.json["message"])
        if code == "mailbox_problematic":
            assert r.json["reason"] == "auth_failed" and r.json["reconnect_url"] == "/mailboxes"
    assert_nothing_sent(sink)


def test_each_precondition_fails_with_its_own_message_in_the_form(app, world, cases, sink):
    app.config["EIS_SEND_MAX_ATTACHMENT_BYTES"] = 1024 * 1024
    table, box = cases
    for name, user, customer, over, status, code, words in table:
        client = world.login(user)
        csrf = csrf_from(client.get("/").get_data(as_text=True))
        data = {"csrf_token": csrf, "mailbox_id": str(box.id), "subject": "Nabídka", "body": "Dobrý den",
                "idempotency_key": f"form-{name}"}
        upload = None
        for key, value in over.items():
            if key == "attachments":
                upload = base64.b64decode(value[0]["content_base64"])
            else:
                data[key] = str(value)

        def form(data=data, upload=upload):
            return {**data, **({"attachments": (io.BytesIO(upload), "big.bin")} if upload else {})}

        r = client.post(f"/customers/{customer}/emails", data=form(), headers={"HX-Request": "true"},
                        content_type="multipart/form-data")
        if code == "not_found":
            assert r.status_code == 404
            continue
        assert r.status_code == 200, (name, r.status_code)  # htmx swaps only 2xx answers
        page = r.get_data(as_text=True)
        assert f'data-problem="{code}"' in page, (name, page)
        text = re.sub(r"\s+", " ", page.replace("&#39;", "'").replace("&gt;", ">").replace("&lt;", "<"))
        for word in words:
            assert word in text, (name, word)
        if code == "mailbox_problematic":
            assert '<a href="/mailboxes">Reconnect the account</a>' in page
        if code not in ("activities_not_permitted", "no_mailbox", "customer_has_no_email"):
            # What was typed stays in the form.
            assert 'value="Nabídka"' in page or code == "subject_missing"
        # Without htmx the page comes back whole, with the error's status.
        plain = client.post(f"/customers/{customer}/emails", data=form(), content_type="multipart/form-data")
        assert plain.status_code == status, (name, plain.status_code)
    assert_nothing_sent(sink)


def test_the_form_shows_what_stops_sending_as_soon_as_it_opens(world, sink):
    world.customer("C-NOVAK", "jiri.novak@client.test", name="Jiří Novák")
    world.customer("C-NONE", None, name="Karel Bez Adresy")
    rep = world.user("petra@crm.test", "rep")
    client = world.login(rep)
    page = client.get("/customers/C-NOVAK/emails/new", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert 'data-problem="no_mailbox"' in page and '<a href="/mailboxes">' in page and "hx-post" not in page
    own_mailbox(world, rep, "broken@agency.test", state="problematic", reason="auth_failed")
    page = client.get("/customers/C-NOVAK/emails/new").get_data(as_text=True)
    assert 'data-notice="mailbox_problematic"' in page and "(Problematic)" in page and "hx-post" in page
    page = client.get("/customers/C-NONE/emails/new").get_data(as_text=True)
    assert 'data-problem="customer_has_no_email"' in page and "hx-post" not in page
    denied = world.login(world.user("np@crm.test", "rep", can_see_activities=False))
    r = denied.get("/customers/C-NOVAK/emails/new")
    assert r.status_code == 403 and 'data-problem="activities_not_permitted"' in r.get_data(as_text=True)
    assert "Jiří" not in r.get_data(as_text=True)


# --- failures: refusals are not retried, transient faults are ------------------------------------


def test_refused_smtp_login_fails_the_email_and_makes_the_mailbox_problematic(team, world, sink):
    rep, box = team
    sink.users[box.address] = "another password"
    api = world.api(rep)
    r = api.post("/customers/C-NOVAK/emails", json=payload(box))
    work()
    outgoing = db.session.get(OutgoingEmail, r.json["id"])
    assert (outgoing.state, outgoing.reason, outgoing.attempts) == ("failed", "auth_failed", 1)
    assert "535" in outgoing.detail
    box = db.session.get(Mailbox, box.id)
    assert (box.state, box.reason) == ("problematic", "auth_failed")
    assert db.session.query(MailboxStateChange).filter_by(mailbox_id=box.id, to_state="problematic").count() == 1
    assert get_queue("send").scheduled_job_registry.get_job_ids() == []  # not retried
    assert sink.messages == []
    state = api.get("/customers/C-NOVAK/activities").json["activities"][0]["outgoing"]
    assert state["state"] == "failed" and state["reason"] == "auth_failed"
    assert "rejected the password" in state["reason_text"]
    # The next email from it is refused at once, with the way out.
    again = api.post("/customers/C-NOVAK/emails", json=payload(box, idempotency_key="next"))
    assert again.status_code == 409 and again.json["error"] == "mailbox_problematic"
    # The page shows the failure where the email is logged.
    client = world.login(rep)
    fragment = client.get(f"/outgoing-emails/{outgoing.id}", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert 'data-state="failed"' in fragment and "hx-trigger" not in fragment
    assert "rejected the password" in fragment


def test_transient_failure_is_retried_after_the_interval_and_then_sent(team, world, sink):
    rep, box = team
    sink.fail_next(1, 451, "4.3.0 Try again later")
    r = world.api(rep).post("/customers/C-NOVAK/emails", json=payload(box))
    work()
    outgoing = db.session.get(OutgoingEmail, r.json["id"])
    assert (outgoing.state, outgoing.attempts) == ("queued", 1)
    assert outgoing.reason == "protocol_error" and "451 4.3.0 Try again later" in outgoing.detail
    assert get_queue("send").scheduled_job_registry.get_job_ids() == [send_job_id(outgoing.id)]
    assert sink.messages == []
    client = world.login(rep)
    fragment = client.get(f"/outgoing-emails/{outgoing.id}", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert 'data-state="queued"' in fragment and 'hx-trigger="every 2s"' in fragment and "retrying" in fragment

    deadline = time.monotonic() + 10
    while db.session.get(OutgoingEmail, r.json["id"]).state == "queued" and time.monotonic() < deadline:
        time.sleep(0.3)
        work(scheduler=True)
    outgoing = db.session.get(OutgoingEmail, r.json["id"])
    assert (outgoing.state, outgoing.attempts, outgoing.reason) == ("sent", 2, None)
    assert len(sink.messages) == 1
    assert db.session.get(Mailbox, box.id).state != "problematic"


def test_transient_failures_past_the_last_retry_fail_the_email_but_not_the_mailbox(app, team, world, sink):
    rep, box = team
    app.config["EIS_SEND_RETRY_INTERVALS"] = [0, 0]  # retried at once: three attempts in one burst
    sink.fail_next(5, 421, "4.7.0 Too many connections, try again later")
    r = world.api(rep).post("/customers/C-NOVAK/emails", json=payload(box))
    work()
    outgoing = db.session.get(OutgoingEmail, r.json["id"])
    assert (outgoing.state, outgoing.attempts, outgoing.reason) == ("failed", 3, "throttled")
    assert sink.messages == []
    assert db.session.get(Mailbox, box.id).state == "pending"  # never synced, and not Problematic


def test_recipient_refused_by_the_server_fails_without_retry(team, world, sink):
    rep, box = team
    sink.fail_next(1, 554, "5.7.1 Message rejected as spam")
    r = world.api(rep).post("/customers/C-NOVAK/emails", json=payload(box))
    work()
    outgoing = db.session.get(OutgoingEmail, r.json["id"])
    assert (outgoing.state, outgoing.reason, outgoing.attempts) == ("failed", "message_rejected", 1)
    assert get_queue("send").scheduled_job_registry.get_job_ids() == []
    assert "spam" in outgoing.detail
    assert db.session.get(Mailbox, box.id).state == "pending"


def test_a_sent_email_is_never_sent_again(team, world, sink):
    from portal.sending.deliver import send_outgoing

    rep, box = team
    r = world.api(rep).post("/customers/C-NOVAK/emails", json=payload(box))
    work()
    assert send_outgoing(r.json["id"])["skipped"] == "already done"
    assert len(sink.messages) == 1


# --- double submit -----------------------------------------------------------------------------


def test_double_submit_through_the_api_sends_once(team, world, sink):
    rep, box = team
    api = world.api(rep)
    first = api.post("/customers/C-NOVAK/emails", json=payload(box), headers={"Idempotency-Key": "click-1"})
    second = api.post("/customers/C-NOVAK/emails", json=payload(box), headers={"Idempotency-Key": "click-1"})
    third = api.post("/customers/C-NOVAK/emails", json=payload(box, idempotency_key="click-1"))
    assert (first.status_code, second.status_code, third.status_code) == (202, 200, 200)
    assert first.json["id"] == second.json["id"] == third.json["id"]
    assert first.json["idempotency_key"] == "click-1"
    work()
    assert len(sink.messages) == 1 and len(outgoing_rows()) == 1
    assert db.session.query(Email).count() == 1 and db.session.query(Activity).count() == 1
    # Another user's identical key is their own email.
    colleague = world.user("tomas@crm.test", "rep")
    other_box = own_mailbox(world, colleague, "tomas@agency.test")
    use_sink(other_box, sink, "tomas-pw")
    r = world.api(colleague).post("/customers/C-NOVAK/emails", json=payload(other_box),
                                  headers={"Idempotency-Key": "click-1"})
    assert r.status_code == 202 and r.json["id"] != first.json["id"]


def test_double_submit_of_the_form_sends_once_with_its_attachment(team, world, sink):
    rep, box = team
    client = world.login(rep)
    form = client.get("/customers/C-NOVAK/emails/new", headers={"HX-Request": "true"}).get_data(as_text=True)
    key = re.search(r'name="idempotency_key" value="([^"]+)"', form).group(1)
    assert 'hx-disabled-elt="find button[type=\'submit\']"' in form  # the button is off while sending
    csrf = csrf_from(form)

    def submit():
        return client.post("/customers/C-NOVAK/emails", headers={"HX-Request": "true"},
                           content_type="multipart/form-data",
                           data={"csrf_token": csrf, "idempotency_key": key, "mailbox_id": str(box.id),
                                 "subject": SUBJECT, "body": BODY, "cc": "jana.novakova@client.test",
                                 "attachments": (io.BytesIO(PDF), "nabídka.pdf", "application/pdf")})

    first, second = submit(), submit()
    assert first.status_code == second.status_code == 200
    first_page, second_page = first.get_data(as_text=True), second.get_data(as_text=True)
    assert "is logged on the customer" in first_page and 'data-state="queued"' in first_page
    assert "was not sent again" in second_page
    new_key = re.search(r'name="idempotency_key" value="([^"]+)"', first_page).group(1)
    assert new_key != key  # a fresh form for the next email
    assert len(outgoing_rows()) == 1
    work()
    assert len(sink.messages) == 1
    _, rcpt_tos, _, msg = received(sink)
    assert rcpt_tos == ["jiri.novak@client.test", "jana.novakova@client.test"]
    attachment = next(msg.iter_attachments())
    assert attachment.get_filename() == "nabídka.pdf" and attachment.get_content() == PDF
    # The customer's page shows the form and the email's state.
    page = client.get("/customers/C-NOVAK").get_data(as_text=True)
    assert 'id="send-email"' in page and 'data-state="sent"' in page


def test_attachments_past_the_request_limit_get_the_same_clear_message(app, team, world, sink):
    rep, box = team
    app.config["MAX_CONTENT_LENGTH"] = 200 * 1024
    client = world.login(rep)
    csrf = csrf_from(client.get("/").get_data(as_text=True))
    r = client.post("/customers/C-NOVAK/emails", headers={"HX-Request": "true"}, content_type="multipart/form-data",
                    data={"csrf_token": csrf, "mailbox_id": str(box.id), "subject": "S", "body": "B",
                          "attachments": (io.BytesIO(b"x" * 300 * 1024), "big.bin")})
    assert r.status_code == 200 and 'data-problem="attachment_too_large"' in r.get_data(as_text=True)
    assert_nothing_sent(sink)


# --- OAuth mailboxes ------------------------------------------------------------------------------


def test_oauth_mailbox_sends_with_xoauth2_and_refreshes_a_refused_token_once(team, world, sink, monkeypatch):
    from portal.accounts import sessions

    rep, _ = team
    box = Mailbox(user_id=rep.id, address="petra@gmail.test", provider="google", state="active",
                  login="petra@gmail.test", smtp_host="127.0.0.1", smtp_port=sink.port, smtp_security="none")
    db.session.add(box)
    db.session.commit()
    calls = []

    def access_token_for(mailbox, force_refresh=False):
        calls.append(force_refresh)
        return "fresh-token" if force_refresh else "stale-token"

    # The token comes from the provider's endpoints (tests/test_oauth.py has them); here, a stand-in.
    monkeypatch.setattr(sessions, "access_token_for", access_token_for)
    sink.token_checker = lambda user, token: (user, token) == ("petra@gmail.test", "fresh-token")

    r = world.api(rep).post("/customers/C-NOVAK/emails", json=payload(box))
    assert r.status_code == 202, r.json
    work()
    assert db.session.get(OutgoingEmail, r.json["id"]).state == "sent"
    assert calls == [False, True]
    assert sink.logins == [("XOAUTH2", "petra@gmail.test")]
    assert len(sink.messages) == 1

    # A token refused even after the refresh: the mailbox is Problematic, as IMAP would make it.
    sink.token_checker = lambda user, token: False
    r = world.api(rep).post("/customers/C-NOVAK/emails", json=payload(box, idempotency_key="second"))
    work()
    assert db.session.get(OutgoingEmail, r.json["id"]).reason == "auth_failed"
    assert db.session.get(Mailbox, box.id).state == "problematic"
