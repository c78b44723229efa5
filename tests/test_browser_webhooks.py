"""An admin connects the CRM's webhook receiver and reads the delivery log in Chromium: adds the
endpoint (the secret shown once), sees a refused delivery with the receiver's answer, presses
Redeliver, and the real worker process delivers it again with the same event id."""
import time

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from portal.accounts import state
from portal.extensions import db
from portal.models import Mailbox
from portal.models.webhooks import WebhookDelivery
from tests.webhook_receiver import Receiver


@pytest.fixture
def receiver():
    server = Receiver().start()
    yield server
    server.stop()


def wait_for(what, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, f"still not true after {timeout} s: {what.__doc__}"
        time.sleep(0.1)
        db.session.expire_all()


def test_admin_adds_the_crm_endpoint_reads_the_delivery_log_and_presses_redeliver(
        app, world, person, receiver, worker_process):
    app.config.update(EIS_WEBHOOK_RATE_PER_SECOND=0, EIS_WEBHOOK_TIMEOUT_SECONDS=3)
    worker_process()
    boss = world.user("boss@crm.test", "admin", name="Alena Boss")
    owner = world.user("petra@crm.test", "rep")
    box = Mailbox(user_id=owner.id, address="petra@agency.test", provider="imap", state="active",
                  imap_host="127.0.0.1", imap_port=1, imap_security="none")
    db.session.add(box)
    db.session.commit()

    person.sign_in(boss.email)
    person.open("Admin")
    person.link("Webhooks").click()
    expect(person.page.get_by_role("heading", name="Webhooks")).to_be_visible()
    person.audit("no endpoint yet")
    person.link("Add endpoint").click()
    person.audit("the form")
    person.page.get_by_label("Receiver URL").fill(receiver.url)
    person.page.get_by_label("Description").fill("Our CRM")
    person.button("Add endpoint").click()
    expect(person.page.get_by_role("heading", name="Endpoint added")).to_be_visible()
    receiver.secret = person.page.get_by_label(f"Signing secret for {receiver.url}").input_value()
    assert receiver.secret.startswith("whsec_")
    person.audit("the secret, shown once")

    # The CRM refuses the first event (a 400 is final) ...
    receiver.answers = [400]
    state.mark_problematic(box, "auth_failed", "[AUTHENTICATIONFAILED] Authentication failed.")
    db.session.commit()

    def refused():
        """the delivery failed"""
        return db.session.scalar(select(WebhookDelivery.state)) == "failed"
    wait_for(refused)

    # ... the admin reads why in the log, and redelivers once the CRM is fixed.
    person.link("Done: to the endpoint").click()
    log = person.page.get_by_role("region", name="Delivery log")
    expect(log).to_contain_text("mailbox.state_changed")
    expect(log).to_contain_text("Failed")
    expect(log).to_contain_text("HTTP 400")
    expect(log).to_contain_text('"status": 400')  # the receiver's own answer
    assert person.page.get_by_label(f"Signing secret for {receiver.url}").count() == 0  # never shown again
    person.audit("the delivery log, a refused event")
    event_id = receiver.requests[0].event["id"]
    person.button(f"Redeliver {event_id}").click()
    expect(person.flash()).to_contain_text(f"Event {event_id} is queued to be delivered again")

    def delivered():
        """the delivery was redelivered"""
        return db.session.scalar(select(WebhookDelivery.state)) == "delivered"
    wait_for(delivered)
    person.page.reload()
    expect(log).to_contain_text("Delivered")
    expect(log).to_contain_text("redelivered")
    expect(log.get_by_text("HTTP 200")).to_be_visible()
    person.shoot("admin-webhook-log.png")
    assert [r.event["id"] for r in receiver.requests] == [event_id, event_id]  # the same id: de-duplicated
    assert list(receiver.processed) == [event_id] and all(r.signature_ok for r in receiver.requests)
