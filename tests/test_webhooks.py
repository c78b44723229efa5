"""Webhooks to the CRM against a real HTTP receiver (tests/webhook_receiver.py, a thread of this
process) that checks every signature and de-duplicates by event id, as a CRM should: retries
after a 500, the final refusal after a 400, order per mailbox, the outbox (nothing written
without an endpoint, nothing lost when the worker is killed between the change and the
delivery), the host policy, and the events of a real sync (Dovecot) and a real send (SMTP)."""
import re
import subprocess
import time

import pytest
from rq import SimpleWorker
from sqlalchemy import func, select

from devservers import SmtpSink
from devservers.worker import WorkerProcess
from portal.accounts import state
from portal.extensions import db
from portal.jobs.schedule import Scheduler
from portal.jobs.webhooks import sweep_due_webhooks
from portal.models import AuditEvent, Mailbox
from portal.models.webhooks import EVENT_TYPES, WebhookDelivery, WebhookEndpoint, WebhookEvent
from portal.queue import QUEUES, get_queue, get_redis
from portal.webhooks import endpoints
from portal.webhooks.delivery import redeliver
from portal.webhooks.http import UrlRefused
from portal.webhooks.signing import verify
from tests.factories import csrf_from
from tests.test_sync_durability import _kill_hard
from tests.webhook_receiver import Receiver


def admins(status, others=403):
    return {"rep": others, "support": others, "it": others, "admin": status}


ROUTE_ROLE_TABLE = [
    ("GET", "/admin/webhooks", None, admins(200)),
    ("GET", "/admin/webhooks/new", None, admins(200)),
    ("POST", "/admin/webhooks/new", {"url": "ftp://crm.example/hooks"}, admins(400)),
    ("GET", "/admin/webhooks/0", None, admins(404)),
    ("GET", "/admin/webhooks/0/edit", None, admins(404)),
    ("POST", "/admin/webhooks/0/edit", {"url": "https://crm.example/x"}, admins(404)),
    ("POST", "/admin/webhooks/0/enabled", {"enabled": "no"}, admins(404)),
    ("POST", "/admin/webhooks/0/secret", {}, admins(404)),
    ("GET", "/admin/webhooks/0/delete", None, admins(404)),
    ("POST", "/admin/webhooks/0/delete", {}, admins(404)),
    ("POST", "/admin/webhooks/deliveries/0/redeliver", {}, admins(404)),
    ("GET", "/api/v1/webhooks/endpoints", None, admins(200)),
]


@pytest.fixture
def receiver():
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture
def fast(app):
    """Retries after 1 s (then 2, 4 ...), no rate limit, short time-outs: the rules, not the waits."""
    app.config.update(EIS_WEBHOOK_RETRY_FIRST_SECONDS=1, EIS_WEBHOOK_RATE_PER_SECOND=0,
                      EIS_WEBHOOK_TIMEOUT_SECONDS=3)
    return app


@pytest.fixture
def boss(world):
    return world.user("boss@crm.test", "admin")


@pytest.fixture
def hook(fast, boss, receiver):
    """An endpoint for every event type, added as an admin adds it; the receiver has its secret."""
    endpoint, secret = endpoints.add(receiver.url, EVENT_TYPES, "The CRM", boss)
    db.session.commit()
    receiver.secret = secret
    return endpoint


def work():
    """Every queued job, run by a real RQ worker (the delivery jobs are queued after the commit)."""
    db.session.commit()  # end the test's read: the jobs write
    SimpleWorker([get_queue(q) for q in QUEUES], connection=get_redis()).work(burst=True)
    db.session.expire_all()


def tick_and_work():
    """What the scheduler's tick does for webhooks, then the worker."""
    sweep_due_webhooks()
    work()


def a_mailbox(world, address="petra@agency.test") -> Mailbox:
    owner = world.user(address.replace("agency", "crm"), "rep")
    box = Mailbox(user_id=owner.id, address=address, provider="imap", state="active",
                  imap_host="127.0.0.1", imap_port=1, imap_security="none")
    db.session.add(box)
    db.session.commit()
    return box


def deliveries() -> list[WebhookDelivery]:
    return db.session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.event_seq)).all()


WORDS = "[AUTHENTICATIONFAILED] Authentication failed."


# -- the body, the signature, the answers ------------------------------------------------------
def test_a_mailbox_turning_problematic_reaches_the_crm_signed(world, hook, receiver):
    box = a_mailbox(world)
    state.mark_problematic(box, "auth_failed", WORDS)
    db.session.commit()
    work()

    [request] = receiver.requests
    assert request.signature_ok and request.status == 200
    header = request.headers["EIS-Signature"]
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", header)
    assert abs(int(header[2:header.index(",")]) - time.time()) < 60
    assert not verify(receiver.secret, header, request.body + b" ")  # the body is what is signed
    assert not verify("another secret", header, request.body)
    event = request.event
    assert set(event) == {"id", "type", "created_at", "data"}
    assert re.fullmatch(r"evt_[0-9a-f]{32}", event["id"]) and event["type"] == "mailbox.state_changed"
    assert request.headers["EIS-Event-Id"] == event["id"]
    data = event["data"]
    assert {k: data[k] for k in ("mailbox_id", "address", "owner_email", "old_state", "new_state", "reason",
                                 "detail")} == {
        "mailbox_id": box.id, "address": "petra@agency.test", "owner_email": "petra@crm.test",
        "old_state": "active", "new_state": "problematic", "reason": "auth_failed", "detail": WORDS}
    [delivery] = deliveries()
    assert delivery.state == "delivered" and delivery.attempts == 1
    assert delivery.attempt_log[0].status_code == 200 and '"received": true' in delivery.attempt_log[0].response_excerpt


def test_a_500_is_retried_with_the_same_id_and_the_mailboxs_next_event_waits_for_it(world, hook, receiver):
    box = a_mailbox(world)
    receiver.answers = [500]
    state.mark_problematic(box, "auth_failed", WORDS)
    db.session.commit()
    state.resume(box, None)  # reconnected: the next event of the same mailbox
    db.session.commit()
    work()
    assert [r.status for r in receiver.requests] == [500]  # the second waits behind the first
    first, second = deliveries()
    assert (first.state, first.attempts, second.state, second.attempts) == ("pending", 1, "pending", 0)
    assert first.next_attempt_at is not None

    time.sleep(1.1)  # the first back-off
    tick_and_work()
    assert [r.status for r in receiver.requests] == [500, 200, 200]
    assert receiver.requests[0].event["id"] == receiver.requests[1].event["id"]  # the same event again
    assert [e["data"]["new_state"] for e in receiver.events()] == ["problematic", "pending"]  # never synced yet
    assert [a.outcome for a in first.attempt_log] == ["retry", "delivered"]
    assert [d.state for d in deliveries()] == ["delivered", "delivered"]


def test_429_is_retried_but_a_400_is_final(world, hook, receiver):
    box = a_mailbox(world)
    receiver.answers = [429, 400]
    state.mark_problematic(box, "auth_failed", WORDS)
    db.session.commit()
    work()
    time.sleep(1.1)
    tick_and_work()
    [delivery] = deliveries()
    assert delivery.state == "failed" and delivery.last_status == 400
    assert [(a.status_code, a.outcome) for a in delivery.attempt_log] == [(429, "retry"), (400, "failed")]
    assert '"status": 400' in delivery.attempt_log[-1].response_excerpt

    time.sleep(2.1)
    assert sweep_due_webhooks() == 0  # nothing is due any more: no more requests
    work()
    assert len(receiver.requests) == 2 and receiver.processed == {}


def test_redeliver_sends_the_same_id_and_the_receiver_drops_the_duplicate(world, boss, hook, receiver):
    box = a_mailbox(world)
    state.mark_problematic(box, "auth_failed", WORDS)
    db.session.commit()
    work()
    [delivery] = deliveries()
    redeliver(delivery, boss)
    db.session.commit()  # queues the endpoint's job
    work()
    assert [r.status for r in receiver.requests] == [200, 200]
    assert len({r.event["id"] for r in receiver.requests}) == 1 and len(receiver.processed) == 1
    assert [a.redelivery for a in deliveries()[0].attempt_log] == [False, True]


def test_an_unreadable_secret_sends_nothing_unsigned_and_is_retried(world, hook, receiver):
    hook.secret_encrypted = "not a Fernet token"  # e.g. EIS_ENCRYPTION_KEYS lost the key it was made with
    state.mark_problematic(a_mailbox(world), "auth_failed", WORDS)
    db.session.commit()
    work()
    [delivery] = deliveries()
    assert delivery.state == "pending" and "secret cannot be read" in delivery.last_error
    assert receiver.arrived == 0


def test_without_an_enabled_endpoint_no_event_is_written(app, world, boss, receiver):
    box = a_mailbox(world)
    state.mark_problematic(box, "auth_failed", WORDS)
    db.session.commit()
    assert db.session.scalar(select(func.count(WebhookEvent.seq))) == 0
    endpoint, _secret = endpoints.add(receiver.url, ["activity.logged"], "", boss)
    db.session.commit()
    state.resume(box, boss)  # a type the endpoint does not take
    db.session.commit()
    endpoints.set_enabled(endpoint, False, boss)
    db.session.commit()
    state.mark_problematic(box, "auth_failed", WORDS)
    db.session.commit()
    assert db.session.scalar(select(func.count(WebhookEvent.seq))) == 0


def test_the_environment_endpoint_gets_every_event(app, world, fast, receiver):
    app.config.update(EIS_WEBHOOK_URL=receiver.url, EIS_WEBHOOK_SECRET="whsec_from_the_environment")
    receiver.secret = "whsec_from_the_environment"
    box = a_mailbox(world)
    state.mark_problematic(box, "auth_failed", WORDS)
    db.session.commit()
    work()
    assert [e["type"] for e in receiver.events()] == ["mailbox.state_changed"]
    assert receiver.requests[0].signature_ok
    endpoint = db.session.scalar(select(WebhookEndpoint))
    assert endpoint.source == "environment" and endpoint.secret_encrypted is None  # the secret is not stored


# -- which URLs -------------------------------------------------------------------------------------
def test_https_is_required_and_internal_hosts_refused_unless_the_deployment_allows_them(app, world, boss, fast,
                                                                                       receiver):
    app.config["EIS_MAIL_HOSTS_ALLOW"] = None
    refusals = {
        "http://93.184.216.34/hooks": "Use https://",
        "https://127.0.0.1/hooks": "private or internal address",
        "https://169.254.169.254/latest": "private or internal address",
        "https://10.1.2.3/hooks": "EIS_MAIL_HOSTS_ALLOW",
        "ftp://crm.example/hooks": "https://",
        "https://user:pw@93.184.216.34/hooks": "no user name or password",
        "https://no-such-host.invalid/hooks": "not found",
    }
    for url, words in refusals.items():
        with pytest.raises(UrlRefused, match=re.escape(words)):
            endpoints.checked_url(url)
    assert endpoints.checked_url("https://93.184.216.34/hooks")  # a public address over HTTPS

    client = world.login(boss)
    token = csrf_from(client.get("/admin/webhooks/new").get_data(as_text=True))
    r = client.post("/admin/webhooks/new", data={"url": receiver.url, "event_types": list(EVENT_TYPES),
                                                 "csrf_token": token})
    assert r.status_code == 400 and "private or internal address" in r.get_data(as_text=True)
    assert db.session.scalar(select(func.count(WebhookEndpoint.id))) == 0

    # Allowed when added; the deployment then takes the host off its list: refused at delivery.
    app.config["EIS_MAIL_HOSTS_ALLOW"] = "127.0.0.1"
    r = client.post("/admin/webhooks/new", data={"url": receiver.url, "event_types": list(EVENT_TYPES),
                                                 "csrf_token": token})
    assert r.status_code == 201
    app.config["EIS_MAIL_HOSTS_ALLOW"] = None
    state.mark_problematic(a_mailbox(world), "auth_failed", WORDS)
    db.session.commit()
    work()
    [delivery] = deliveries()
    assert delivery.state == "failed" and "private or internal" in delivery.last_error
    assert receiver.arrived == 0


def test_https_receivers_are_verified_against_the_trusted_certificates(app, world, boss, fast, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "2", "-subj", "/CN=crm.test", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    receiver = Receiver(tls=(str(cert), str(key))).start()
    try:
        endpoint, receiver.secret = endpoints.add(receiver.url, EVENT_TYPES, "", boss)
        db.session.commit()
        state.mark_problematic(a_mailbox(world), "auth_failed", WORDS)
        db.session.commit()
        work()  # the receiver's certificate is not trusted: no answer, retried later
        [delivery] = deliveries()
        assert delivery.state == "pending" and "CERTIFICATE_VERIFY_FAILED" in delivery.last_error
        assert receiver.requests == []

        app.config["EIS_TLS_CA_FILE"] = str(cert)  # the deployment trusts its private CA
        time.sleep(1.1)
        tick_and_work()
        assert deliveries()[0].state == "delivered"
        assert receiver.requests[0].signature_ok and receiver.url.startswith("https://")
    finally:
        receiver.stop()


# -- the admin's pages and the API --------------------------------------------------------------
def test_the_secret_is_shown_once_and_never_again(world, boss, fast, receiver):
    client = world.login(boss)
    token = csrf_from(client.get("/admin/webhooks/new").get_data(as_text=True))
    r = client.post("/admin/webhooks/new", data={"url": receiver.url, "event_types": ["activity.logged"],
                                                 "description": "CRM", "csrf_token": token})
    assert r.status_code == 201 and r.headers["Cache-Control"] == "no-store"
    secret = re.search(r'value="(whsec_[^"]+)"', r.get_data(as_text=True)).group(1)
    endpoint = db.session.scalar(select(WebhookEndpoint))
    assert secret not in endpoint.secret_encrypted
    for path in ("/admin/webhooks", f"/admin/webhooks/{endpoint.id}", f"/admin/webhooks/{endpoint.id}/edit"):
        assert secret not in client.get(path).get_data(as_text=True)
    api = world.api(boss).get("/webhooks/endpoints")
    assert api.status_code == 200 and secret not in api.get_data(as_text=True)
    assert "secret" not in str(api.json["endpoints"][0].keys())
    # Without the CSRF token nothing happens.
    assert client.post(f"/admin/webhooks/{endpoint.id}/secret").status_code == 400


def test_an_admin_edits_disables_and_removes_an_endpoint(world, boss, hook, receiver):
    client = world.login(boss)
    page = f"/admin/webhooks/{hook.id}"
    token = csrf_from(client.get(page).get_data(as_text=True))
    r = client.post(f"{page}/edit", data={"url": receiver.url + "?v=2", "event_types": ["outgoing.failed"],
                                          "description": "CRM v2", "enabled": "y", "csrf_token": token})
    assert r.status_code == 302
    db.session.refresh(hook)
    assert (hook.url, hook.event_types, hook.description) == (receiver.url + "?v=2", ["outgoing.failed"], "CRM v2")
    r = client.post(f"{page}/edit", data={"url": receiver.url, "event_types": [], "csrf_token": token})
    assert r.status_code == 400 and "Choose at least one event type" in r.get_data(as_text=True)

    r = client.post(f"{page}/enabled", data={"enabled": "no", "csrf_token": token})
    assert r.status_code == 302 and not db.session.get(WebhookEndpoint, hook.id).enabled
    endpoints.set_enabled(hook, True, boss)
    hook.event_types = list(EVENT_TYPES)
    db.session.commit()
    receiver.answers = [503]
    state.mark_problematic(a_mailbox(world), "auth_failed", WORDS)
    db.session.commit()
    work()
    assert "1 waiting event is dropped" in client.get(f"{page}/delete").get_data(as_text=True)
    r = client.post(f"{page}/delete", data={"csrf_token": token})
    assert r.status_code == 302
    assert db.session.scalar(select(func.count(WebhookEndpoint.id))) == 0
    assert db.session.scalar(select(func.count(WebhookDelivery.id))) == 0
    assert db.session.scalar(select(func.count(WebhookEvent.seq))) == 0  # no endpoint has them any more
    audit = [a for (a,) in db.session.execute(select(AuditEvent.action).order_by(AuditEvent.id))]
    assert [a for a in audit if a.startswith("webhook")] == [
        "webhook_endpoint_added", "webhook_endpoint_changed", "webhook_endpoint_disabled", "webhook_endpoint_enabled",
        "webhook_endpoint_removed"]


def test_the_api_lists_endpoints_with_their_recent_deliveries(world, boss, hook, receiver):
    receiver.answers = [400]
    state.mark_problematic(a_mailbox(world), "auth_failed", WORDS)
    db.session.commit()
    work()
    [listed] = world.api(boss).get("/webhooks/endpoints?deliveries=5").json["endpoints"]
    assert listed["url"] == receiver.url and listed["enabled"] and listed["source"] == "admin"
    assert listed["counts"] == {"pending": 0, "delivered": 0, "failed": 1}
    [delivery] = listed["recent_deliveries"]
    assert delivery["event_type"] == "mailbox.state_changed" and delivery["state"] == "failed"
    assert delivery["attempts"][0]["status_code"] == 400 and delivery["attempts"][0]["outcome"] == "failed"
    assert world.api(boss).get("/webhooks/endpoints?deliveries=x").status_code == 400


# -- a killed worker ----------------------------------------------------------------------------------
def test_no_event_is_lost_when_the_worker_is_killed_between_the_change_and_the_delivery(app, world, boss, hook,
                                                                                         receiver):
    box = a_mailbox(world)
    receiver.delay = 2.0  # the first request hangs: the worker dies in the middle of it
    state.mark_problematic(box, "auth_failed", WORDS)
    db.session.commit()  # the change and its event; the delivery job is queued in Redis
    state.disconnect(box, boss)
    db.session.commit()
    worker = WorkerProcess(app.config)  # the real `python worker.py`, RQ forking a work-horse
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while receiver.arrived == 0:
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.02)
        assert _kill_hard(worker._proc)  # SIGKILL, worker and horse, with the request in flight
    finally:
        worker.stop()
    db.session.expire_all()
    assert [d.state for d in deliveries()] == ["pending", "pending"]  # nothing recorded as delivered

    # Another worker, and the scheduler's tick: the killed job is found and the events delivered.
    worker = WorkerProcess(app.config)
    worker.start()
    try:
        scheduler = Scheduler(app)
        deadline = time.monotonic() + 45
        while [d.state for d in deliveries()] != ["delivered", "delivered"]:
            assert time.monotonic() < deadline, worker.log_tail()
            scheduler.tick()
            db.session.commit()
            time.sleep(0.5)
            db.session.expire_all()
    finally:
        worker.stop()
    first_id = receiver.order[0]
    assert sum(r.event["id"] == first_id for r in receiver.requests) == 2  # sent again: at least once
    assert [e["data"]["new_state"] for e in receiver.events()] == ["problematic", "disconnected"]  # each once, in order
    assert all(r.signature_ok for r in receiver.requests)


# -- events from a real sync and a real send --------------------------------------------------------
def test_a_real_sync_sends_each_logged_activity_as_the_api_shows_it_then_the_state_change(mail, world, boss, hook,
                                                                                         receiver):
    world.customer("C-DVORAK", "dvorak@client.test", name="Karel Dvořák")
    world.customer("C-NOVAK", "jiri.novak@client.test", name="Jiří Novák")
    rep, box = mail.rep_with_mailbox("petra")
    mail.put(box.address, from_="dvorak@client.test", to=box.address, cc="jiri.novak@client.test",
             subject="Offer for flat 12")
    mail.put(box.address, from_="someone@elsewhere.test", to=box.address, subject="Not a customer")
    assert mail.sync(box, "backfill").status == "succeeded"  # the delivery job runs after the sync

    types = [(e["type"], e["data"].get("new_state") or e["data"].get("customer_external_id")) for e in receiver.events()]
    assert types[0] == ("mailbox.state_changed", "pending")  # linked
    assert sorted(types[1:3]) == [("activity.logged", "C-DVORAK"), ("activity.logged", "C-NOVAK")]
    assert types[3:] == [("mailbox.state_changed", "active")]  # after the activities it explains
    api = world.api(boss)
    for event in receiver.events("activity.logged"):
        customer = event["data"]["customer_external_id"]
        [shown] = api.get(f"/customers/{customer}/activities").json["activities"]
        shown.pop("text_body")
        assert event["data"]["activity"] == shown
        assert all(r.signature_ok for r in receiver.requests)


@pytest.fixture(scope="module")
def smtp_server():
    with SmtpSink() as server:
        yield server


def test_a_real_send_sends_activity_logged_then_outgoing_sent_or_failed_with_the_reason(mail, world, hook, receiver,
                                                                                       smtp_server, app):
    app.config["EIS_SEND_RETRY_INTERVALS"] = [1]
    smtp_server.clear()  # the server lives for the module: another backend's run sent through it too
    smtp_server.users.clear()
    world.customer("C-NOVAK", "jiri.novak@client.test", name="Jiří Novák")
    rep, box = mail.rep_with_mailbox("petra")
    box.smtp_host, box.smtp_port, box.smtp_security = "127.0.0.1", smtp_server.port, "none"
    smtp_server.users[box.address] = "imap-pass-1"
    db.session.commit()
    api = world.api(rep)
    sent = api.post("/customers/C-NOVAK/emails", json={"mailbox_id": box.id, "subject": "Contract", "body": "Hello"})
    assert sent.status_code == 202
    work()
    assert len(smtp_server.messages) == 1
    logged, done = [e for e in receiver.events() if e["type"] != "mailbox.state_changed"]
    assert logged["type"] == "activity.logged" and logged["data"]["activity"]["outgoing"]["state"] == "queued"
    assert done["type"] == "outgoing.sent"
    assert {k: done["data"][k] for k in ("outgoing_id", "state", "reason", "customer_external_id", "subject")} == {
        "outgoing_id": sent.json["id"], "state": "sent", "reason": None, "customer_external_id": "C-NOVAK",
        "subject": "Contract"}

    smtp_server.users[box.address] = "changed elsewhere"  # the server now refuses the login
    failed = api.post("/customers/C-NOVAK/emails", json={"mailbox_id": box.id, "subject": "Again", "body": "Hi"})
    work()
    last = receiver.events()[-2:]
    assert [e["type"] for e in last] == ["mailbox.state_changed", "outgoing.failed"]
    assert last[0]["data"]["new_state"] == "problematic"
    data = last[1]["data"]
    assert data["outgoing_id"] == failed.json["id"] and data["state"] == "failed" and data["reason"] == "auth_failed"
    assert data["reason_text"] and data["detail"]


def test_old_final_events_are_pruned_with_their_attempts_and_waiting_ones_kept(app, world, hook, receiver):
    """Months unattended: delivered (and finally refused) events older than
    EIS_RUN_RETENTION_DAYS go, with their deliveries and attempts, a batch a scheduler tick; an
    event still waiting for a retry stays whatever its age."""
    from datetime import timedelta

    from portal.models.webhooks import WebhookAttempt
    from portal.timeutil import utcnow
    from portal.webhooks import outbox

    box = a_mailbox(world)
    receiver.answers = [200, 400, 500]
    for _ in range(3):
        state.mark_problematic(box, "auth_failed", WORDS)
        db.session.commit()
        state.resume(box, None)
        db.session.commit()
    work()  # problematic delivered, pending refused (final), next problematic 500 (retry): the rest wait
    old = utcnow() - timedelta(days=91)
    db.session.execute(WebhookEvent.__table__.update().values(created_at=old))
    db.session.commit()
    states = [d.state for d in deliveries()]
    assert states[:3] == ["delivered", "failed", "pending"] and len(states) == 6

    assert outbox.prune(90, batch=1) == 1
    assert outbox.prune(90) == 1  # the refused one; the waiting ones are kept
    assert outbox.prune(90) == 0
    assert [d.state for d in deliveries()] == ["pending"] * 4
    assert db.session.scalar(select(func.count(WebhookAttempt.id))) == 1  # the 500's attempt, kept
    app.config["EIS_RUN_RETENTION_DAYS"] = 90
    assert Scheduler(app, "pruner").tick()["pruned"] == 0
