"""A sales rep's day-one journeys, end to end in Chromium, against real parts only: the
portal over HTTP, a real `python worker.py` process, Dovecot (passwords and XOAUTH2 checked
against the authorization server), the authlib authorization server standing in for
Microsoft and Google (which cannot be reached from here; it shows a sign-in and consent page
as they do), an SMTP server, Redis and the database.

Each journey goes through visible labels and roles, as a person does, on a desktop and on a
390x844 phone screen (the phone on SQLite only: the layout does not depend on the database).
"""
import email
import email.policy
import re
from dataclasses import dataclass

import pytest
from playwright.sync_api import expect
from sqlalchemy import func, select

from devservers import OUTLOOK, make_message
from portal.extensions import db
from portal.models import Activity, Mailbox, OutgoingEmail
from tests.journeys import SYNC_SECONDS, Person
from tests.oauthworld import OAuthWorld

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")

TIMEOUT = SYNC_SECONDS * 1000


@dataclass
class Team:
    ow: OAuthWorld
    rep: object
    person: Person

    @property
    def page(self):
        return self.person.page

    def oauth_address(self, local: str) -> str:
        return self.ow.address(local)

    def connect_at_provider(self, provider: str, account: str, *, untick: tuple[str, ...] = ()) -> None:
        """At the provider's sign-in page: the account, the permissions, Accept."""
        page = self.page
        title = {"microsoft": "Microsoft", "google": "Google"}[provider]
        expect(page.get_by_role("heading", name=f"Sign in to {title}")).to_be_visible()
        assert page.url.startswith(self.ow.server.url), page.url  # the browser really left the portal
        page.get_by_label("Email address").fill(account)
        for scope in untick:
            page.get_by_label(scope, exact=True).uncheck()
        page.get_by_role("button", name="Accept").click()

    def activity_rows(self) -> int:
        db.session.expire_all()
        return db.session.scalar(select(func.count(Activity.id)))


PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}


@pytest.fixture(params=["desktop", "phone"])
def browser_context_args(browser_context_args, request):
    """Each journey on a desktop and on a phone (pytest-playwright's context takes these)."""
    return {**browser_context_args, **(PHONE if request.param == "phone" else {})}


@pytest.fixture
def team(app, world, oauth_server, oauth_dovecot, smtp_sink, live_server, worker_process, person):
    """A rep signed in, customers in the CRM, both providers configured against the test
    authorization server (with its consent page), and a worker process running."""
    ow = OAuthWorld(app, world, oauth_server, oauth_dovecot, smtp_sink, redirect_bases=(live_server,))
    app.config["EIS_LIVE_POLL_SECONDS"] = 0.5
    app.config["EIS_HEADER_BATCH"] = 50  # a long sync moves its progress bar often
    for name in ("microsoft", "google"):
        ow.flavour(name).interactive = True
    world.customer("C-NOVAK", "jiri.novak@klient.test", name="Jiří Novák")
    world.customer("C-DVORAK", "karel.dvorak@klient.test", name="Karel Dvořák")
    rep = world.user(f"petra-{ow.tag}@crm.test", "rep", name="Petra Svobodová")
    worker_process()
    person.sign_in(rep.email)
    yield Team(ow, rep, person)
    for name in ("microsoft", "google"):
        ow.flavour(name).interactive = False
        ow.flavour(name).unticked = set()


def _customer_activities(team: Team, name: str):
    """Customers, search, open the customer: their Activities."""
    page = team.page
    team.person.open("Customers")
    page.get_by_role("searchbox", name="Search customers").fill(name)
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name=name).click()
    expect(page.get_by_role("heading", name=name, level=1)).to_be_visible()
    return page.get_by_role("region", name="Logged emails")


@pytest.mark.parametrize("provider, label", [("microsoft", "Connect Outlook"), ("google", "Connect Google")])
def test_rep_connects_with_oauth_then_the_first_sync_logs_customer_email(team, provider, label):
    address = team.oauth_address(f"first-{provider}")
    team.ow.mail.put(address, from_="Jiří Novák <jiri.novak@klient.test>", to=address,
                     subject="Dotaz na byt 3+kk", days_ago=3)
    team.ow.mail.put(address, from_="newsletter@shop.test", to=address, subject="Sleva 20 %")
    person, page = team.person, team.page

    person.open("My email accounts")
    expect(page.get_by_role("heading", name="No email account connected yet")).to_be_visible()
    person.audit("My email accounts, nothing connected")
    person.link(label).click()
    team.connect_at_provider(provider, address)

    expect(person.flash()).to_contain_text(f"{address} is connected with")
    card = person.card(address)
    expect(card.locator(".state")).to_have_text("Active", timeout=TIMEOUT)  # the worker's first sync
    person.audit("My email accounts, connected and synced")
    timeline = _customer_activities(team, "Jiří Novák")
    expect(timeline.get_by_role("link", name="Dotaz na byt 3+kk")).to_be_visible()
    person.audit("a customer's Activities")
    expect(timeline).not_to_contain_text("Sleva")
    box = db.session.scalars(select(Mailbox).where(Mailbox.address == address)).one()
    assert (box.provider, box.user_id) == (provider, team.rep.id)


def test_rep_withholding_smtp_send_at_consent_is_not_connected_and_told_what_is_missing(team):
    address = team.oauth_address("nosmtp")
    person, page = team.person, team.page
    person.open("My email accounts")
    person.link("Connect Outlook").click()
    team.connect_at_provider("microsoft", address, untick=(OUTLOOK + "SMTP.Send",))

    expect(person.flash()).to_contain_text("Not connected")
    expect(person.flash()).to_contain_text("SMTP.Send")
    person.audit("My email accounts, consent refused")
    expect(page.get_by_role("heading", name="No email account connected yet")).to_be_visible()
    assert db.session.scalars(select(Mailbox).where(Mailbox.address == address)).all() == []


def test_rep_reconnects_after_the_grant_was_revoked_and_nothing_is_logged_twice(team):
    address = team.oauth_address("revoked")
    ow, person, page = team.ow, team.person, team.page
    ow.mail.put(address, from_="karel.dvorak@klient.test", to=address, subject="Prohlídka v sobotu", days_ago=2)
    person.open("My email accounts")
    person.link("Connect Outlook").click()
    team.connect_at_provider("microsoft", address)
    card = person.card(address)
    expect(card.locator(".state")).to_have_text("Active", timeout=TIMEOUT)
    assert team.activity_rows() == 1

    ow.flavour("microsoft").revoke_grant(address)  # a password reset at Microsoft, say
    ow.mail.put(address, from_="karel.dvorak@klient.test", to=address, subject="Ještě jedna otázka", days_ago=0)
    person.button("Sync now", card).click()
    expect(card.locator(".state")).to_have_text("Problematic", timeout=TIMEOUT)
    expect(card).to_contain_text("The permission to read this mailbox was revoked or has expired")
    expect(card).to_contain_text("AADSTS50173")  # the provider's own words
    expect(page.locator("#problem-banner")).to_be_visible()
    person.audit("My email accounts, Problematic")
    person.shoot("rep-mailboxes.png")

    person.link("Reconnect", card).click()
    team.connect_at_provider("microsoft", address)  # the page offers the same account
    expect(person.flash()).to_contain_text(f"{address} is reconnected")
    expect(person.card(address).locator(".state")).to_have_text("Active", timeout=TIMEOUT)
    expect(person.card(address).locator(".mailbox-now")).to_have_count(0, timeout=TIMEOUT)
    person.audit("My email accounts, reconnected")

    timeline = _customer_activities(team, "Karel Dvořák")
    expect(timeline.locator(".activity")).to_have_count(2)
    expect(timeline).to_contain_text("Ještě jedna otázka")
    assert team.activity_rows() == 2


def test_rep_connects_an_imap_account_after_a_wrong_password(team):
    address = team.ow.mail.imap_user("imap", "the-right-one")
    dovecot = team.ow.dovecot
    person, page = team.person, team.page
    person.open("My email accounts")
    person.link("Any other mail server (IMAP)").click()
    person.audit("Connect an email account (IMAP)")
    page.get_by_label("Email address").fill(address)
    page.get_by_label("Password").fill("a-wrong-one")
    page.get_by_label("IMAP server").fill("127.0.0.1")
    page.get_by_label("IMAP port").fill(str(dovecot.imap_port))
    page.get_by_label("IMAP security").select_option(label="None (unencrypted)")
    person.button("Connect").click()

    error = page.get_by_role("alert")
    expect(error).to_contain_text("Not connected.")
    expect(error).to_contain_text("The mail server refused the login and password.")
    assert db.session.scalars(select(Mailbox).where(Mailbox.address == address)).all() == []
    expect(page.get_by_label("Email address")).to_have_value(address)  # what was typed stays
    person.audit("Connect an email account, refused")

    page.get_by_label("Password").fill("the-right-one")
    person.button("Connect").click()
    expect(person.flash()).to_contain_text(f"{address} is connected")
    expect(person.card(address).locator(".state")).to_have_text("Active", timeout=TIMEOUT)


def _connected_imap(team: Team, local: str, *, smtp: bool = False, address: str | None = None) -> str:
    """An IMAP account connected through the form (and its first sync done)."""
    address = address or team.ow.mail.imap_user(local, "imap-pass-1")
    page, person = team.page, team.person
    person.go("/mailboxes/connect")
    page.get_by_label("Email address").fill(address)
    page.get_by_label("Password").fill("imap-pass-1")
    page.get_by_label("IMAP server").fill("127.0.0.1")
    page.get_by_label("IMAP port").fill(str(team.ow.dovecot.imap_port))
    page.get_by_label("IMAP security").select_option(label="None (unencrypted)")
    if smtp:
        team.ow.sink.users[address] = "imap-pass-1"
        page.get_by_label("SMTP server").fill("127.0.0.1")
        page.get_by_label("SMTP port").fill(str(team.ow.sink.port))
        page.get_by_label("SMTP security").select_option(label="None (unencrypted)")
    person.button("Connect").click()
    expect(person.card(address).locator(".state")).to_have_text("Active", timeout=TIMEOUT)
    return address


def test_rep_presses_sync_now_and_watches_it_progress(team):
    address = _connected_imap(team, "busy")
    page, person = team.page, team.person
    new_mail = [(_plain(f"Zpráva {n}", "stranger@elsewhere.test", address), (), None) for n in range(8000)]
    new_mail.append((_plain("Nová nabídka", "jiri.novak@klient.test", address), (), None))
    team.ow.dovecot.write_maildir(address, "INBOX", new_mail)
    card = person.card(address)
    # Record what the card says each time htmx swaps it in: the progress a person watches.
    page.evaluate("""() => {
        window.__seen = [];
        new MutationObserver(() => {
            const now = document.querySelector('article.mailbox .now-text');
            if (now && window.__seen[window.__seen.length - 1] !== now.textContent) window.__seen.push(now.textContent);
        }).observe(document.body, {subtree: true, childList: true});
        window.__sameDocument = true;
    }""")

    person.button("Sync now", card).click()
    expect(card).to_contain_text(f"Sync of {address} queued.")
    person.audit("My email accounts, sync queued")
    expect(card.locator(".mailbox-now")).to_have_count(0, timeout=TIMEOUT)
    seen = page.evaluate("window.__seen")
    assert any(re.fullmatch(r"Syncing new mail in INBOX: \d+ of 8001", text) for text in seen), seen
    assert page.evaluate("window.__sameDocument") is True  # live, without a reload
    assert card.get_attribute("hx-trigger") is None  # and the polling stopped
    expect(card.locator(".state")).to_have_text("Active")
    timeline = _customer_activities(team, "Jiří Novák")
    expect(timeline.get_by_role("link", name="Nová nabídka")).to_be_visible()


def _plain(subject: str, sender: str, to: str) -> bytes:
    return make_message(from_=sender, to=to, subject=subject, body="Dobrý den")


def test_rep_sends_an_email_from_a_customers_page_and_sees_it_sent(team):
    ow = team.ow
    address = ow.mail.imap_user("sender", "imap-pass-1")
    karel, me = "Karel Dvořák <karel.dvorak@klient.test>", f"Petra Svobodová <{address}>"
    offer = ("<p>Dobrý den, pane Dvořáku,</p><p>posílám nabídku bytu <b>3+kk v Dejvicích</b>:</p>"
             "<table border=1 cellpadding=6><tr><th>Dispozice</th><td>3+kk, 86 m², balkon</td></tr>"
             "<tr><th>Cena</th><td><b>12 490 000 Kč</b></td></tr></table><p>S pozdravem<br>Petra Svobodová</p>")
    for folder, message, days in (
            ("INBOX", dict(from_=karel, to=address, subject="Dotaz na byt 3+kk v Dejvicích",
                           body="Dobrý den, je byt ještě volný?"), 6),
            ("Sent", dict(from_=me, to=karel, subject="Re: Dotaz na byt 3+kk v Dejvicích – nabídka",
                          body="Posílám nabídku.", html=offer,
                          attachments=[("Půdorys 3+kk.pdf", "application/pdf", b"%PDF-1.4\n" + b"x" * 40_000)]), 5),
            ("INBOX", dict(from_=karel, to=address, subject="Prohlídka ve čtvrtek",
                           body="Čtvrtek nám vyhovuje."), 2)):
        ow.mail.put(address, folder, days_ago=days, **message)
    _connected_imap(team, "sender", smtp=True, address=address)
    ow.sink.clear()
    page, person = team.page, team.person
    timeline = _customer_activities(team, "Karel Dvořák")
    expect(timeline.locator(".activity")).to_have_count(3)
    form = page.get_by_role("region", name="Send email")
    form.get_by_label("Subject").fill("Rezervační smlouva")
    form.get_by_label("Message").fill("Dobrý den,\n\nv příloze posílám rezervační smlouvu.\n\nPetra")
    person.button("Send email", form).click()

    sent = page.get_by_role("region", name="Send email").get_by_role("status")
    expect(sent).to_contain_text("is logged on the customer’s Activities")
    expect(sent.locator(".outgoing-state .state")).to_have_text("Sent", timeout=TIMEOUT)
    person.audit("a customer's Activities, email sent")
    expect(timeline.get_by_role("link", name="Rezervační smlouva")).to_be_visible()
    mail_from, recipients, raw = ow.sink.wait_for(1)[0]
    assert (mail_from, recipients) == (address, ["karel.dvorak@klient.test"])
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["Subject"] == "Rezervační smlouva"
    assert "rezervační smlouvu" in message.get_body(("plain",)).get_content()
    outgoing = db.session.scalars(select(OutgoingEmail)).one()
    db.session.refresh(outgoing)
    assert outgoing.state == "sent"
    person.shoot("customer-activities.png")

    timeline.get_by_role("link", name="Re: Dotaz na byt 3+kk v Dejvicích – nabídka").click()
    expect(page.frame_locator("iframe.email-frame").locator("body")).to_contain_text("12 490 000 Kč")
    person.audit("an email")
    expect(page.get_by_role("link", name=re.compile("Půdorys 3\\+kk.pdf"))).to_be_visible()
    person.shoot("email.png")
