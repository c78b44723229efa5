"""Header injection through RFC 2047 encoded words, and the send body's size limit (security
review, items 3 and 8), end to end: the real API and page form, a real RQ worker, and the
SMTP sink's own copy of what it received, read back header by header.

Python's email package decodes "=?utf-8?q?...=0D=0A...?=" in the values it is given and
(without the fix for CVE-2024-6923) writes the decoded line break as it is: each attack
below once put a header of its own into the message.
"""
import base64
import email
import email.policy
import io

import pytest
from rq import SimpleWorker

from devservers import SmtpSink
from portal.extensions import db
from portal.mail import headers
from portal.models import Activity, Customer, CustomerContactEmail, Deal, Email, OutgoingEmail, User
from portal.queue import QUEUES, get_queue, get_redis
from tests.factories import csrf_from

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

SMTP_PASSWORD = "imap-pass-1"
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 4
# The headers the product writes: at the top (Cc only when there is one), and on each part.
TOP = ["From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"]
ALTERNATIVE = ["Content-Type"]
TEXT = ["Content-Type", "Content-Transfer-Encoding"]
ATTACHMENT = ["Content-Type", "Content-Transfer-Encoding", "Content-Disposition"]

BCC_SUBJECT = "=?utf-8?q?Hi=0D=0ABcc:_x@evil.test?="
BLANK_LINE_SUBJECT = "=?utf-8?q?Hi=0D=0A=0D=0Abody?="
EVIL_CUSTOMER_NAME = "=?utf-8?q?Jiri_Novak=0D=0AReply-To:_x@evil.test?="
EVIL_REP_NAME = "=?utf-8?q?Petra=0D=0ABcc:_boss@evil.test?="
EVIL_FILENAME = "=?utf-8?q?a.pdf=0D=0AX-Evil:_1?="


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
    """Petra (a rep) with an IMAP mailbox on Dovecot that sends through the SMTP sink, and a customer."""
    rep, box = mail.rep_with_mailbox("petra")
    rep.name = "Petra Dvořáková"
    box.smtp_host, box.smtp_port, box.smtp_security = "127.0.0.1", sink.port, "none"
    sink.users[box.address] = SMTP_PASSWORD
    db.session.commit()
    world.customer("C-NOVAK", "jiri.novak@client.test", name="Jiří Novák")
    return rep, box


def work():
    SimpleWorker([get_queue(q) for q in QUEUES], connection=get_redis()).work(burst=True)
    db.session.expire_all()


def payload(box, **over):
    return {"mailbox_id": box.id, "subject": "Nabídka", "body": "Dobrý den", **over}


def received(sink):
    """What the SMTP server received: (recipients, message read with the standard parser,
    message read without decoding anything, for its header names as they are on the wire)."""
    assert len(sink.messages) == 1
    _, rcpt_tos, raw = sink.messages[0]
    return (rcpt_tos, email.message_from_bytes(raw, policy=email.policy.default),
            email.message_from_bytes(raw, policy=email.policy.compat32))


def names(part) -> list[str]:
    return list(part.keys())


def assert_only_product_headers(wire, top=TOP):
    """Exactly the headers the product writes, at the top and on every part."""
    assert names(wire) == top
    alternative = wire if wire.get_content_type() == "multipart/alternative" else wire.get_payload()[0]
    if alternative is not wire:
        assert names(alternative) == ALTERNATIVE
    for text in alternative.get_payload():
        assert names(text) == TEXT
    if alternative is not wire:
        for attachment in wire.get_payload()[1:]:
            assert names(attachment) == ATTACHMENT


def assert_nothing_stored_or_sent(sink):
    work()
    assert sink.messages == [] and sink.logins == []
    assert db.session.query(OutgoingEmail).count() == 0
    assert db.session.query(Email).count() == 0 and db.session.query(Activity).count() == 0


def post_form(client, box, **fields):
    csrf = csrf_from(client.get("/").get_data(as_text=True))
    data = {"csrf_token": csrf, "mailbox_id": str(box.id), "subject": "Nabídka", "body": "Dobrý den", **fields}
    htmx = client.post("/customers/C-NOVAK/emails", data=data, headers={"HX-Request": "true"},
                       content_type="multipart/form-data")
    plain = client.post("/customers/C-NOVAK/emails", data=data, content_type="multipart/form-data")
    return htmx, plain


# --- what the sender types in this send: refused with its own message ----------------------------


def test_a_subject_with_an_encoded_line_break_is_refused_and_nothing_is_sent(team, world, sink):
    rep, box = team
    r = world.api(rep).post("/customers/C-NOVAK/emails", json=payload(box, subject=BCC_SUBJECT))
    assert (r.status_code, r.json["error"], r.json["field"]) == (422, "subject_invalid", "subject"), r.json
    assert "line break" in r.json["message"] and "encoded words" in r.json["message"]
    assert_nothing_stored_or_sent(sink)


def test_the_blank_line_subject_is_a_clear_422_not_a_500_in_the_api_and_the_form(team, world, sink):
    rep, box = team
    r = world.api(rep).post("/customers/C-NOVAK/emails", json=payload(box, subject=BLANK_LINE_SUBJECT))
    assert (r.status_code, r.json["error"]) == (422, "subject_invalid"), r.json
    htmx, plain = post_form(world.login(rep), box, subject=BLANK_LINE_SUBJECT)
    assert htmx.status_code == 200 and 'data-problem="subject_invalid"' in htmx.get_data(as_text=True)
    assert plain.status_code == 422 and "line break" in plain.get_data(as_text=True)
    assert_nothing_stored_or_sent(sink)


def test_a_cc_with_an_encoded_line_break_in_its_name_or_address_is_refused(team, world, sink):
    rep, box = team
    api = world.api(rep)
    r = api.post("/customers/C-NOVAK/emails", json=payload(
        box, cc=['"=?utf-8?q?Jana=0D=0ABcc:_x=40evil.test?=" <jana@client.test>']))
    assert (r.status_code, r.json["error"], r.json["field"]) == (422, "invalid_cc", "cc"), r.json
    assert "line break" in r.json["message"]
    # A valid address to email_validator, and one the email package decodes: "a\r\nbcc: x@...".
    r = api.post("/customers/C-NOVAK/emails", json=payload(box, cc="=?utf-8?q?a=0d=0abcc=3a_x?=@client.test"))
    assert (r.status_code, r.json["error"]) == (422, "invalid_cc"), r.json
    assert_nothing_stored_or_sent(sink)


# --- names from stored data: cleaned when the email is composed ---------------------------------


def test_stored_names_with_encoded_line_breaks_are_cleaned_in_what_is_sent(team, world, sink):
    rep, box = team
    # Data from before the fix, written straight to the database.
    customer = db.session.query(Customer).filter_by(external_id="C-NOVAK").one()
    customer.name = EVIL_CUSTOMER_NAME
    db.session.get(User, rep.id).name = EVIL_REP_NAME
    db.session.commit()
    r = world.api(rep).post("/customers/C-NOVAK/emails", json=payload(box))
    assert r.status_code == 202, r.json
    work()
    assert db.session.get(OutgoingEmail, r.json["id"]).state == "sent"
    rcpt_tos, msg, wire = received(sink)
    assert rcpt_tos == ["jiri.novak@client.test"]
    assert_only_product_headers(wire)
    assert [(a.display_name, a.addr_spec) for a in msg["To"].addresses] == [
        ("Jiri Novak Reply-To: x@evil.test", "jiri.novak@client.test")]
    assert [(a.display_name, a.addr_spec) for a in msg["From"].addresses] == [
        ("Petra Bcc: boss@evil.test", box.address)]


# --- the CRM API: new stored names are clean -------------------------------------------------------


def test_the_crm_api_refuses_names_and_addresses_with_line_breaks_or_control_characters(world):
    api = world.api(world.user("admin@example.test", "admin"))
    for name, words in [(EVIL_CUSTOMER_NAME, ["line break", "encoded words"]),
                        ("=?utf-8?q?Jana=00?=", ["control character", "U+0000"]),
                        ("Jana\x1b[31m Nováková", ["control character", "U+001B"]),
                        ("Jana\u2028Nováková", ["line break"])]:
        r = api.put("/customers/C-NEW", json={"name": name, "primary_email": "jana@client.test"})
        assert (r.status_code, r.json["error"], r.json["field"]) == (422, "invalid_field", "name"), (name, r.json)
        assert "'name'" in r.json["message"]
        for word in words:
            assert word in r.json["message"], (name, word)
    # A literal NUL: refused before any view reads it (PostgreSQL cannot store it), or here.
    r = api.put("/customers/C-NEW", json={"name": "Jana\x00Nováková", "primary_email": "jana@client.test"})
    assert r.status_code in (400, 422) and ("NUL" in r.json["message"] or "U+0000" in r.json["message"])
    assert db.session.query(Customer).count() == 0

    r = api.put("/customers/C-NEW", json={"name": "Jana", "additional_emails": [
        "jana.home@client.test", "=?utf-8?q?a=0d=0abcc=3a_x?=@client.test"]})
    assert (r.status_code, r.json["error"], r.json["field"]) == (422, "invalid_email", "additional_emails[1]")
    assert "line break" in r.json["message"]
    assert db.session.query(Customer).count() == 0 and db.session.query(CustomerContactEmail).count() == 0

    # An existing customer keeps its name.
    assert api.put("/customers/C-NEW", json={"name": "Jana Nováková"}).status_code == 201
    r = api.put("/customers/C-NEW", json={"name": EVIL_CUSTOMER_NAME})
    assert r.status_code == 422 and api.get("/customers/C-NEW").json["name"] == "Jana Nováková"

    r = api.put("/deals/D-1", json={"name": "=?utf-8?q?Flat=0D=0AX-Evil:_1?=",
                                    "customers": [{"external_id": "C-NEW", "role": "primary"}]})
    assert (r.status_code, r.json["error"], r.json["field"]) == (422, "invalid_field", "name"), r.json
    assert db.session.query(Deal).count() == 0


# --- attachment file names: cleaned -------------------------------------------------------------


def test_an_attachment_filename_with_an_encoded_line_break_is_cleaned(team, world, sink):
    rep, box = team
    r = world.api(rep).post("/customers/C-NOVAK/emails", json=payload(box, attachments=[
        {"filename": EVIL_FILENAME, "content_type": "application/pdf",
         "content_base64": base64.b64encode(PDF).decode()}]))
    assert r.status_code == 202, r.json
    assert r.json["attachments"][0]["filename"] == "a.pdf X-Evil: 1"
    work()
    _, msg, wire = received(sink)
    assert_only_product_headers(wire)
    assert names(wire.get_payload()[1]) == ATTACHMENT
    attachment = next(msg.iter_attachments())
    assert attachment.get_filename() == "a.pdf X-Evil: 1" and attachment.get_content() == PDF


# --- the last line of defence: the composed bytes read back -------------------------------------


def test_a_header_the_product_did_not_write_refuses_the_send_never_a_500(team, world, sink, monkeypatch):
    rep, box = team
    # As if the cleaning missed something (CVE-2024-6923: folding writes a line break as it is).
    monkeypatch.setattr(headers, "clean", lambda value: value or "")
    customer = db.session.query(Customer).filter_by(external_id="C-NOVAK").one()
    for name, words in [(EVIL_CUSTOMER_NAME, ["'reply-to'"]), ("=?utf-8?q?Ji=0D=0A=0D=0Abody?=", ["lost"])]:
        customer.name = name
        db.session.commit()
        r = world.api(rep).post("/customers/C-NOVAK/emails", json=payload(box))
        assert (r.status_code, r.json["error"]) == (422, "message_invalid"), (name, r.json)
        for word in words:
            assert word in r.json["message"], (name, r.json["message"])
    assert_nothing_stored_or_sent(sink)


# --- the body's size limit (item 8) ---------------------------------------------------------------


def test_a_body_over_the_limit_is_413_in_the_api_and_the_form_and_nothing_is_stored(app, team, world, sink):
    rep, box = team
    app.config["EIS_SEND_MAX_BODY_BYTES"] = 64 * 1024
    api = world.api(rep)
    r = api.post("/customers/C-NOVAK/emails", json=payload(box, body="x" * (64 * 1024 + 1)))
    assert (r.status_code, r.json["error"], r.json["field"]) == (413, "body_too_large", "body"), r.json
    assert "at most 64 KB" in r.json["message"] and r.json["limit_bytes"] == 64 * 1024
    # Bytes, not characters: "ř" is two of them.
    r = api.post("/customers/C-NOVAK/emails", json=payload(box, body="ř" * (32 * 1024) + "x"))
    assert (r.status_code, r.json["error"]) == (413, "body_too_large"), r.json
    htmx, plain = post_form(world.login(rep), box, body="x" * (64 * 1024 + 1))
    assert htmx.status_code == 200 and 'data-problem="body_too_large"' in htmx.get_data(as_text=True)
    assert plain.status_code == 413 and "at most 64 KB" in plain.get_data(as_text=True)
    assert_nothing_stored_or_sent(sink)
    # The limit itself is allowed.
    r = api.post("/customers/C-NOVAK/emails", json=payload(box, body="x" * (64 * 1024)))
    assert r.status_code == 202, r.json


def test_the_default_body_limit_is_one_megabyte(app, team, world, sink):
    rep, box = team
    assert app.config["EIS_SEND_MAX_BODY_BYTES"] == 1024 * 1024
    r = world.api(rep).post("/customers/C-NOVAK/emails", json=payload(box, body="x" * (1024 * 1024 + 1)))
    assert (r.status_code, r.json["error"]) == (413, "body_too_large"), r.json
    assert "at most 1 MB" in r.json["message"]
    assert_nothing_stored_or_sent(sink)


def test_the_form_upload_filename_is_cleaned_too(team, world, sink):
    rep, box = team
    client = world.login(rep)
    csrf = csrf_from(client.get("/").get_data(as_text=True))
    r = client.post("/customers/C-NOVAK/emails", headers={"HX-Request": "true"}, content_type="multipart/form-data",
                    data={"csrf_token": csrf, "mailbox_id": str(box.id), "subject": "Nabídka", "body": "Dobrý den",
                          "attachments": (io.BytesIO(PDF), EVIL_FILENAME, "application/pdf")})
    assert r.status_code == 200 and "is logged on the customer" in r.get_data(as_text=True)
    work()
    _, msg, wire = received(sink)
    assert_only_product_headers(wire)
    assert next(msg.iter_attachments()).get_filename() == "a.pdf X-Evil: 1"
