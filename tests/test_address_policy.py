"""Who may connect which address (security review, item 1). Every address ever connected
counts as internal, so a rep who connects a customer's address through a mail server of
their own hides that customer's email from everybody. Allowed domains stop it before
anything is tried or saved (API, page and OAuth alike); an admin can release an address
that was connected wrongly, in Chromium, after a confirmation that says what changes."""
import pytest
from playwright.sync_api import expect
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import AuditEvent, Mailbox
from tests.factories import csrf_from
from tests.oauthworld import OAuthWorld
from tests.oauthworld import flashes as _flashes

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


def link_body(mail, address, password="imap-pass-1"):
    return {"address": address, "password": password, "imap_host": "127.0.0.1",
            "imap_port": mail.dovecot.imap_port, "imap_security": "none"}


# -- allowed domains ---------------------------------------------------------------------------------
def test_an_address_outside_the_allowed_domains_is_refused_through_the_api_before_anything_is_tried(
        app, mail, world):
    app.config["EIS_MAILBOX_DOMAINS"] = "Agency.test, crm.test"
    mail.dovecot.add_user("victim@klient.test", "imap-pass-1")  # a server that would accept the login
    api = world.api(world.user("rep1@crm.test", "rep"))
    r = api.post("/me/mailboxes", json=link_body(mail, "Victim@Klient.test"))
    assert r.status_code == 422 and r.json["error"] == "domain_not_allowed", r.json
    assert "only addresses at agency.test, crm.test" in r.json["message"]
    assert db.session.scalar(select(func.count(Mailbox.id))) == 0
    # An address at an allowed domain (whatever its case) still links.
    allowed = mail.imap_user("petra")
    assert api.post("/me/mailboxes", json=link_body(mail, allowed.upper())).status_code == 201


def test_an_address_outside_the_allowed_domains_is_refused_on_the_connect_page(app, mail, world, dovecot):
    app.config["EIS_MAILBOX_DOMAINS"] = "agency.test"
    client = world.login(world.user("rep1@crm.test", "rep"))
    page = client.get("/mailboxes/connect").get_data(as_text=True)
    r = client.post("/mailboxes/connect", data={
        "csrf_token": csrf_from(page), "address": "victim@klient.test", "login": "", "password": "imap-pass-1",
        "imap_host": "127.0.0.1", "imap_port": str(dovecot.imap_port), "imap_security": "none",
        "smtp_host": "", "smtp_port": "", "smtp_security": "ssl"})
    html = r.get_data(as_text=True)
    assert r.status_code == 422 and "only addresses at agency.test may be connected" in html
    assert 'value="victim@klient.test"' in html  # the form is kept, to correct
    assert db.session.scalar(select(func.count(Mailbox.id))) == 0


def test_oauth_takes_the_address_from_the_id_token_and_refuses_one_outside_the_domains(
        app, world, oauth_server, oauth_dovecot, smtp_sink):
    ow = OAuthWorld(app, world, oauth_server, oauth_dovecot, smtp_sink)
    app.config["EIS_MAILBOX_DOMAINS"] = "crm.test"  # the OAuth Dovecot's addresses are at agency.test
    _, client = ow.rep("petra")
    ow.connect(client, "microsoft", ow.address("petra"))
    assert "only addresses at crm.test may be connected" in _flashes(client)
    assert db.session.scalar(select(func.count(Mailbox.id))) == 0
    app.config["EIS_MAILBOX_DOMAINS"] = "agency.test"
    ow.connect(client, "microsoft", ow.address("petra"))
    assert db.session.scalars(select(Mailbox.address)).one() == ow.address("petra")


def test_the_health_page_warns_when_any_domain_may_be_connected(app, world):
    client = world.login(world.user("ada@crm.test", "admin"))
    html = client.get("/admin/health").get_data(as_text=True)
    assert 'data-setting="EIS_MAILBOX_DOMAINS"' in html and "any address at any domain may be connected" in html
    app.config["EIS_MAILBOX_DOMAINS"] = "agency.test"
    html = client.get("/admin/health").get_data(as_text=True)
    assert "any address at any domain" not in html and "allows only addresses at agency.test" in html


# -- releasing an address ------------------------------------------------------------------------------
def test_the_review_attack_and_an_admin_releasing_the_address_in_chromium(app, mail, world, person):
    """The review's steps: C-VICTIM's email is logged; rep1 connects victim@klient.test
    through a server of rep1's own; rep2's syncs then log nothing for it, even after rep1
    deletes the connection. An admin releases the address: it is logged again."""
    world.customer("C-VICTIM", "victim@klient.test", name="Viktor Oběť")
    rep2, box2 = mail.rep_with_mailbox("rep2")
    mail.put(box2.address, from_="victim@klient.test", to=box2.address, subject="Before")
    assert mail.sync(box2, "backfill").logged == 1

    mail.dovecot.add_user("victim@klient.test", "rep1-own-server")
    rep1 = world.user("rep1@crm.test", "rep")
    claimed = mail.link(rep1, "victim@klient.test", "rep1-own-server")
    mail.put(box2.address, from_="victim@klient.test", to=box2.address, subject="While claimed")
    run = mail.sync(box2)
    assert (run.logged, run.ignored) == (0, {"internal": 1})

    page = person.page
    person.sign_in(world.user("ada@crm.test", "admin", name="Ada").email)
    person.open("Admin")
    page.get_by_role("navigation", name="Admin").get_by_role("link", name="Addresses").click()
    expect(page.get_by_role("heading", name="Connected addresses")).to_be_visible()
    page.get_by_role("searchbox", name="Find an address").fill("victim")
    person.button("Find").click()
    expect(page.get_by_role("row", name="victim@klient.test")).to_be_visible()
    person.audit("Admin: connected addresses")
    person.link("Release victim@klient.test").click()
    expect(page.get_by_role("heading", name="Release victim@klient.test?")).to_be_visible()
    expect(page.locator(".confirm")).to_contain_text("is logged on customers again")
    expect(page.locator(".confirm")).to_contain_text("1 live connection of it is disconnected")
    expect(page.get_by_role("table")).to_contain_text("rep1@crm.test")
    person.audit("Admin: release an address")
    person.shoot("admin-release-address.png")
    person.button("Release victim@klient.test").click()
    expect(person.flash()).to_contain_text("victim@klient.test is no longer a connected mailbox")

    db.session.expire_all()
    claimed = db.session.get(Mailbox, claimed.id)
    assert (claimed.state, claimed.secret_encrypted, claimed.released_at is not None) == ("disconnected", None, True)
    event = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "address_released")).one()
    assert event.detail["address"] == "victim@klient.test" and event.detail["owners"] == ["rep1@crm.test"]
    assert event.actor.email == "ada@crm.test"

    mail.put(box2.address, from_="victim@klient.test", to=box2.address, subject="After the release")
    run = mail.sync(box2)
    assert run.logged == 1 and ("C-VICTIM", "After the release") in mail.activities()
    assert ("C-VICTIM", "While claimed") not in mail.activities()  # as the confirmation said


def test_a_released_address_is_not_internal_even_when_it_was_deleted_first_and_may_be_connected_again(
        app, mail, world):
    from portal.accounts import linking
    from portal.accounts.release import release_address
    from portal.matching import internal_addresses

    rep1 = world.user("rep1@crm.test", "rep")
    address = mail.imap_user("claimed")
    box = mail.link(rep1, address)
    linking.disconnect(box, rep1)  # deleted: it stays internal (DESIGN rule 6)
    db.session.commit()
    assert address in internal_addresses()
    admin = world.user("ada@crm.test", "admin")
    done = release_address(address, admin)
    db.session.commit()
    assert (done.mailboxes, done.disconnected) == (1, 0) and address not in internal_addresses()
    owner = world.user("owner@crm.test", "rep")
    again = mail.link(owner, address)  # the real owner connects it: internal again
    assert again.id != box.id and address in internal_addresses()


def test_releasing_an_address_nobody_connected_is_a_404_that_changes_nothing(world):
    client = world.login(world.user("ada@crm.test", "admin"))
    page = client.get("/admin/addresses").get_data(as_text=True)
    r = client.post("/admin/addresses/release", data={"csrf_token": csrf_from(page), "address": "nobody@x.test"})
    assert r.status_code == 404 and "nothing to release" in r.get_data(as_text=True)
    assert db.session.scalar(select(func.count(AuditEvent.id)).where(AuditEvent.action == "address_released")) == 0
