"""The rep's pages in Chromium: connect and watch a sync live, hostile email stays inert,
and screenshots of the main pages for docs/screenshots/."""
from datetime import datetime, timedelta
from pathlib import Path

from playwright.sync_api import expect

from portal import mailboxes as service
from portal.extensions import db
from portal.models import Email, Mailbox
from tests.servers import make_message

SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


def ago(days: float = 0, hours: float = 0) -> datetime:
    return datetime.now().astimezone() - timedelta(days=days, hours=hours)


def no_dialogs(page):
    """Any alert/confirm/prompt means a script from an email ran: fail loudly."""
    seen = []

    def on_dialog(dialog):
        seen.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    return seen


def test_rep_connects_an_imap_mailbox_and_watches_it_sync(world, mail, dovecot, signed_in_page, live_server):
    address = mail.imap_user("marie")
    world.customer("C-2001", "eliska.cerna@klient.test", name="Eliška Černá")
    for n in range(3):
        mail.put(address, from_="Eliška Černá <eliska.cerna@klient.test>", to=address,
                 subject=f"Pronájem v Brně – dotaz {n + 1}", days_ago=n + 1, date=ago(n + 1))
    rep = world.user("marie@crm.test", "rep", name="Marie Horáková")
    page = signed_in_page(rep)
    dialogs = no_dialogs(page)

    page.goto(live_server + "/mailboxes")
    page.click("text=Any other mail server (IMAP)")
    page.fill("#address", address)
    page.fill("#password", "imap-pass-1")
    page.fill("#imap_host", "127.0.0.1")
    page.fill("#imap_port", str(dovecot.imap_port))
    page.select_option("#imap_security", "none")
    page.click("button:has-text('Connect')")
    page.wait_for_url(live_server + "/mailboxes")

    box = db.session.query(Mailbox).one()
    card = page.locator(f"#mailbox-{box.id}")
    expect(card.locator(".state")).to_have_text("Connecting")
    expect(card.locator(".mailbox-now")).to_contain_text("Queued")
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads

    mail.work()  # the worker runs here while the page polls the card

    expect(card.locator(".state")).to_have_text("Active", timeout=15_000)
    expect(card.locator(".mailbox-now")).to_have_count(0)
    assert page.evaluate("window.__sameDocument") is True
    assert card.get_attribute("hx-trigger") is None  # the polling stopped
    assert ("C-2001", "Pronájem v Brně – dotaz 1") in mail.activities()
    assert dialogs == []


def test_script_payloads_in_an_email_never_run(world, mail, signed_in_page, live_server):
    rep, box = mail.rep_with_mailbox("hana")
    payload = "window.__pwned = true; alert('pwned')"
    world.customer("C-EVIL", "utocnik@klient.test", name=f"<svg onload=\"{payload}\">Útočník")
    mail.put(box.address, from_=(f"<img src=x onerror=\"{payload}\">", "utocnik@klient.test"), to=box.address,
             subject=f"<script>{payload}</script> Nabídka",
             body=f"<script>{payload}</script> text",
             html=(f"<p onmouseover=\"{payload}\">Dobrý den<script>{payload}; document.body.innerHTML='PWNED'</script>"
                   f"<img src=x onerror=\"{payload}\"><svg onload=\"{payload}\"></svg>"
                   f"<a id=link href=\"javascript:{payload}\">odkaz</a>"
                   "<iframe srcdoc=\"<script>parent.__pwned=true</script>\"></iframe></p>"))
    mail.sync(box)
    eid = db.session.query(Email).one().id
    page = signed_in_page(rep)
    dialogs = no_dialogs(page)
    page.add_init_script("window.__pwned = false")

    page.goto(live_server + "/customers/C-EVIL")
    item = page.locator(".activity .subject")
    expect(item).to_have_text(f"<script>{payload}</script> Nabídka")
    expect(page.locator(".participants")).to_contain_text("<img src=x onerror=")
    expect(page.locator("h1")).to_contain_text("<svg onload=")
    item.hover()
    item.click()
    page.wait_for_url(f"{live_server}/emails/{eid}")
    frame = page.frame_locator("iframe.email-frame")
    expect(frame.locator("body")).to_contain_text("Dobrý den")
    expect(frame.locator("body")).not_to_contain_text("PWNED")
    frame.locator("p").hover()
    frame.locator("#link, a").first.click()  # a javascript: link lost its href: a click does nothing
    page.wait_for_timeout(300)
    assert page.evaluate("window.__pwned") is False
    assert dialogs == []
    assert page.locator("iframe.email-frame").get_attribute("sandbox") == ""


def test_screenshots_of_the_rep_pages(world, mail, dovecot, signed_in_page, live_server, app):
    """Realistic Czech demo data: docs/screenshots/rep-mailboxes.png, customer-activities.png, email.png."""
    petra_box, petra_old = "petra.svobodova@reality-demo.test", "petra@byty-praha.test"
    for address in (petra_box, petra_old):  # the session's Dovecot: start from empty mailboxes
        if address in dovecot.users:
            dovecot.remove_user(address, delete_mail=True)
        dovecot.add_user(address, "demo-password")
    world.customer("C-1001", "jiri.novak@klient.test", name="Jiří Novák", additional=["jiri.novak.home@klient.test"])
    world.customer("C-1002", "jana.novakova@klient.test", name="Jana Nováková")
    world.customer("C-1003", "karel.dvorak@klient.test", name="Karel Dvořák")
    world.customer("C-1004", "eliska.cerna@klient.test", name="Eliška Černá")
    world.deal("D-501", "C-1001", "C-1002")
    jiri, jana = "Jiří Novák <jiri.novak@klient.test>", "Jana Nováková <jana.novakova@klient.test>"
    me = f"Petra Svobodová <{petra_box}>"
    offer_html = (
        "<div style=\"font-family:Georgia,serif;color:#222\"><p>Dobrý den, pane Nováku,</p>"
        "<p>posílám slíbenou nabídku bytu <b>3+kk v Dejvicích</b>:</p>"
        "<table border=\"1\" cellpadding=\"6\" style=\"border-collapse:collapse\">"
        "<tr><th align=\"left\">Dispozice</th><td>3+kk, 86 m², balkon</td></tr>"
        "<tr><th align=\"left\">Patro</th><td>4. ze 6, výtah</td></tr>"
        "<tr><th align=\"left\">Cena</th><td><b>12 490 000 Kč</b></td></tr></table>"
        "<p>Prohlídka je možná ve čtvrtek v 17:00. Půdorys najdete v příloze.</p>"
        "<img src=\"https://tracker.example/open.gif\" width=\"1\" height=\"1\">"
        "<p style=\"color:#555\">S pozdravem<br>Petra Svobodová<br>Reality Demo s.r.o. · +420 777 123 456</p></div>"
    )
    floor_plan = b"%PDF-1.4\n% pudorys\n" + bytes(range(256)) * 300
    mails = [
        ("INBOX", dict(from_=jiri, to=petra_box, subject="Dotaz na byt 3+kk v Dejvicích",
                       body="Dobrý den, je byt ještě volný? Rádi bychom se přišli podívat."), 6),
        ("Sent", dict(from_=me, to=jiri, subject="Re: Dotaz na byt 3+kk v Dejvicích – nabídka",
                      body="Dobrý den, pane Nováku, posílám slíbenou nabídku.", html=offer_html,
                      attachments=[("Půdorys 3+kk Dejvice.pdf", "application/pdf", floor_plan)]), 5),
        ("INBOX", dict(from_=jiri, to=petra_box, cc=jana, subject="Prohlídka ve čtvrtek",
                       body="Čtvrtek nám vyhovuje, přijdeme s manželkou."), 4),
        ("Sent", dict(from_=me, to=jiri, cc=jana, subject="Re: Prohlídka ve čtvrtek",
                      body="Výborně, těším se. Sraz před domem."), 3.8),
        ("INBOX", dict(from_=jiri, to=petra_box, subject="Hypotéka – potvrzení banky",
                       body="Banka potvrdila úvěr, posílám potvrzení.",
                       attachments=[("potvrzeni-banky.pdf", "application/pdf", b"%PDF-1.4\n" + b"x" * 52_000)]), 1.2),
        ("INBOX", dict(from_=jiri, to=petra_box, subject="Rezervační smlouva – dotaz k čl. 4",
                       body="Dobrý den, k rezervační smlouvě mám jeden dotaz."), 0.1),
    ]
    for folder, message, days in mails:
        dovecot.append(petra_box, folder, make_message(**message, date=ago(days)), when=ago(days))
    petra = world.user("petra.svobodova@crm.reality-demo.test", "rep", name="Petra Svobodová")
    settings = mail.settings(petra_box, "demo-password")
    settings.smtp_host, settings.smtp_port, settings.smtp_security = "127.0.0.1", 587, "starttls"
    box, _ = service.link_imap_mailbox(petra, settings)
    db.session.commit()
    mail.sync(box, "backfill")
    old = mail.link(petra, petra_old, "demo-password")
    mail.sync(old, "backfill")
    dovecot.set_password(petra_old, "changed-by-it")
    mail.sync(old)
    box = db.session.get(Mailbox, box.id)
    assert (box.state, db.session.get(Mailbox, old.id).state) == ("active", "problematic")

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = signed_in_page(petra)
    page.set_viewport_size({"width": 1280, "height": 860})
    page.goto(live_server + "/mailboxes")
    expect(page.locator(f"#mailbox-{old.id} .state")).to_have_text("Problematic")
    page.click(f"#mailbox-{box.id} button:has-text('Sync now')")  # htmx: the card answers in place
    expect(page.locator(f"#mailbox-{box.id} .mailbox-now")).to_contain_text("Queued")
    expect(page.locator(f"#mailbox-{box.id} .card-notice")).to_contain_text("queued")
    page.screenshot(path=str(SCREENSHOTS / "rep-mailboxes.png"), full_page=True)

    page.goto(live_server + "/customers/C-1001")  # queues nothing: the mailbox synced just now
    expect(page.locator(".activity")).to_have_count(6)
    page.screenshot(path=str(SCREENSHOTS / "customer-activities.png"), full_page=True)

    page.click("text=Re: Dotaz na byt 3+kk v Dejvicích – nabídka")
    expect(page.frame_locator("iframe.email-frame").locator("body")).to_contain_text("12 490 000 Kč")
    page.screenshot(path=str(SCREENSHOTS / "email.png"), full_page=True)
