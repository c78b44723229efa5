"""Linking a password mailbox over the API: tried first, a clear 4xx for each failure."""
import pytest

from portal import crypto
from portal.extensions import db
from portal.models import AuditEvent, Mailbox
from portal.queue import job_state, sync_job_id


def link_body(mail, mailbox_address, password="imap-pass-1", **over):
    body = {"address": mailbox_address, "password": password, "imap_host": "127.0.0.1",
            "imap_port": mail.dovecot.imap_port, "imap_security": "none"}
    return {**body, **over}


def test_link_mailbox_tries_credentials_saves_encrypted_and_queues_backfill(mail, world):
    rep = world.user("rep@crm.test")
    api = world.api(rep)
    address = mail.imap_user("anna")
    r = api.post("/me/mailboxes", json=link_body(mail, address))
    assert r.status_code == 201, r.json
    assert r.json["state"] == "pending" and r.json["owner_email"] == "rep@crm.test"
    assert "password" not in r.json and "imap-pass-1" not in r.get_data(as_text=True)
    mailbox = db.session.get(Mailbox, r.json["id"])
    assert "imap-pass-1" not in mailbox.secret_encrypted
    assert crypto.decrypt(mailbox.secret_encrypted) == "imap-pass-1"
    assert job_state(sync_job_id(mailbox.id)) == "queued"
    assert db.session.query(AuditEvent).filter_by(action="mailbox_connected").count() == 1
    assert [m["address"] for m in api.get("/me/mailboxes").json["mailboxes"]] == [address]


@pytest.mark.parametrize("over, code", [
    ({"password": "wrong"}, "authentication_failed"),
    ({"imap_port": 1}, "connection_failed"),
    ({"imap_security": "ssl"}, "tls_failed"),  # TLS spoken to the plaintext port
])
def test_failed_login_is_a_4xx_saying_which_and_saves_nothing(mail, world, over, code):
    api = world.api(world.user())
    r = api.post("/me/mailboxes", json=link_body(mail, mail.imap_user("bad"), **over))
    assert r.status_code == 422 and r.json["error"] == code, r.json
    assert r.json["message"]
    assert db.session.query(Mailbox).count() == 0


@pytest.mark.parametrize("over, code", [
    ({"address": "not-an-address"}, "invalid_email"),
    ({"imap_port": "993"}, "invalid_field"),
    ({"imap_port": 70000}, "invalid_field"),
    ({"imap_security": "tls"}, "invalid_field"),
    ({"password": ""}, "invalid_field"),
    ({"colour": "red"}, "unknown_field"),
    ({"smtp_host": "smtp.test", "smtp_port": None, "smtp_security": "ssl"}, "invalid_field"),
])
def test_bad_mailbox_input_is_422(mail, world, over, code):
    api = world.api(world.user())
    r = api.post("/me/mailboxes", json=link_body(mail, "x@agency.test", **over))
    assert r.status_code == 422 and r.json["error"] == code, r.json


def test_a_mailbox_is_linked_only_to_the_requesting_user(mail, world):
    address = mail.imap_user("shared")
    first = world.api(world.user("first@crm.test"))
    second = world.api(world.user("second@crm.test"))
    assert first.post("/me/mailboxes", json=link_body(mail, address)).status_code == 201
    r = second.post("/me/mailboxes", json=link_body(mail, address))
    assert r.status_code == 409 and r.json["error"] == "mailbox_taken"
    r = first.post("/me/mailboxes", json=link_body(mail, address))
    assert r.status_code == 409 and r.json["error"] == "already_connected"
    assert second.get("/me/mailboxes").json["mailboxes"] == []


def test_one_user_can_link_several_mailboxes(mail, world):
    api = world.api(world.user())
    for name in ("one", "two"):
        assert api.post("/me/mailboxes", json=link_body(mail, mail.imap_user(name))).status_code == 201
    assert len(api.get("/me/mailboxes").json["mailboxes"]) == 2


def test_delete_wipes_credentials_keeps_the_address(mail, world):
    rep = world.user()
    api = world.api(rep)
    mailbox_id = api.post("/me/mailboxes", json=link_body(mail, mail.imap_user("gone"))).json["id"]
    r = api.delete(f"/me/mailboxes/{mailbox_id}")
    assert r.status_code == 200 and r.json["state"] == "disconnected"
    mailbox = db.session.get(Mailbox, mailbox_id)
    assert mailbox.secret_encrypted is None and mailbox.address.startswith("gone-")
    other = world.api(world.user("other@crm.test"))
    assert other.delete(f"/me/mailboxes/{mailbox_id}").status_code == 404


def test_mailbox_status_and_runs_are_visible_to_owner_and_support_not_other_reps(mail, world):
    rep = world.user("rep@crm.test")
    mailbox = mail.link(rep, mail.imap_user("seen"))
    mail.sync(mailbox)
    owner = world.api(rep)
    r = owner.get(f"/mailboxes/{mailbox.id}")
    assert r.status_code == 200 and r.json["state"] == "active"
    assert r.json["runs"][0]["status"] == "succeeded" and r.json["runs"][0]["trigger"] == "manual"
    assert world.api(world.user("support@crm.test", "support")).get(f"/mailboxes/{mailbox.id}").status_code == 200
    assert world.api(world.user("other@crm.test", "rep")).get(f"/mailboxes/{mailbox.id}").status_code == 404


def test_sync_now_is_idempotent(mail, world):
    rep = world.user()
    mailbox = mail.link(rep, mail.imap_user("idem"))
    api = world.api(rep)
    first = api.post(f"/mailboxes/{mailbox.id}/sync")
    second = api.post(f"/mailboxes/{mailbox.id}/sync")
    assert (first.status_code, first.json["queued"]) == (202, True)
    assert (second.status_code, second.json["queued"], second.json["job"]) == (202, False, "queued")
    mail.work()
    assert mailbox.runs.count() == 1
    assert api.post(f"/mailboxes/{mailbox.id}/sync").json["queued"] is True  # finished: may queue again


def test_sync_of_problematic_mailbox_is_refused_with_the_reason(mail, world):
    rep = world.user()
    mailbox = mail.link(rep, mail.imap_user("prob"))
    mail.dovecot.set_password(mailbox.address, "changed")
    mail.sync(mailbox)
    r = world.api(rep).post(f"/mailboxes/{mailbox.id}/sync")
    assert r.status_code == 409 and r.json["error"] == "mailbox_problematic" and "auth_failed" in r.json["message"]


def test_it_may_see_but_not_sync_someone_elses_mailbox(mail, world):
    mailbox = mail.link(world.user(), mail.imap_user("it"))
    it = world.api(world.user("it@crm.test", "it"))
    assert it.get(f"/mailboxes/{mailbox.id}").status_code == 200
    assert it.post(f"/mailboxes/{mailbox.id}/sync").status_code == 403
