"""Every page on a phone, in Chromium (WCAG 1.4.10 Reflow), and keyboard focus that shows.

Each role signs in on a 390 x 844 touch screen and on a 320 CSS px one (the width WCAG
names) with data as it looks after months of use: long Czech names, subjects and addresses,
a Problematic mailbox, a customer with several logged emails, more customers than a page.
On every page the role can open the page must not scroll sideways; only a data table may,
inside its own card. Nothing may be cut off without a way to scroll to it, and the top
bar's texts never overlap. EIS_PHONE_SHOTS=/tmp/somewhere saves a screenshot of each page.
"""
from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from devservers import OUTLOOK
from portal import crm
from portal.sending.accept import accept
from portal.sending.checks import Draft
from portal.extensions import db
from portal.models import Email, Mailbox
from portal.timeutil import utcnow
from tests.factories import PASSWORD
from tests.journeys import Person

PHONE = {"width": 390, "height": 844}
SMALLEST = {"width": 320, "height": 640}  # WCAG 1.4.10: 320 CSS px wide
DESKTOP = {"width": 1280, "height": 900}
SHOTS = os.environ.get("EIS_PHONE_SHOTS")

LONG_SUBJECT = ("Dotaz na byt 3+kk v Praze 6 – Dejvicích, ulice Na Hutích 12: je ještě volný a jaká je výše "
                "měsíčních poplatků do fondu oprav?")
CUSTOMER = ("C-2024-000117", "Ing. Jiří Novák-Procházka, Ph.D.",
            "jiri.novak-prochazka@stavebni-bytove-druzstvo-dejvice.test")
SPOUSE = ("C-2024-000118", "Mgr. Jana Nováková-Procházková", "jana.novakova-prochazkova@klient.test")
FIRST = ["Bohumila", "Květoslav", "Drahomíra", "Přemysl", "Ludmila", "Radoslav", "Jaroslava", "Ctibor", "Zdeňka",
         "Svatopluk", "Eliška", "Bořivoj"]
LAST = ["Kříženecká-Šťastná", "Dvořák", "Černá", "Procházka", "Kučerová", "Veselý", "Horáková", "Němec",
        "Marešová", "Pospíšil", "Růžičková", "Sedláček"]


def ascii_(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()


@dataclass
class Demo:
    rep: object
    support: object
    it: object
    admin: object
    box: Mailbox          # the rep's mailbox that syncs
    broken: Mailbox       # the rep's Problematic mailbox
    customer_id: str
    email_id: int
    outgoing_id: int
    webhook_id: int = 0  # an endpoint with a long URL and a delivery log


@pytest.fixture
def demo(app, mail, world) -> Demo:
    """A sales team after a few months: what every page of every role shows."""
    rep = world.user(mail.address("petra.svobodova-novakova").replace("agency.test", "crm.test"), "rep",
                     name="Petra Svobodová-Nováková")
    box = mail.link(rep, mail.imap_user("petra.svobodova-novakova"))
    broken = mail.link(rep, mail.imap_user("petra.pronajmy-brno-kralovo-pole"))
    customer = world.customer(*CUSTOMER[:1], CUSTOMER[2], name=CUSTOMER[1],
                              additional=["jiri.novak.domu@seznam-klient.test", "novak.prochazka@firma-klient.test"])
    world.customer(SPOUSE[0], SPOUSE[2], name=SPOUSE[1])
    crm.upsert_deal("D-2024-0042", name="Byt 3+kk, Praha 6 – Dejvice, Na Hutích 12 (prodej, exkluzivně)",
                    owner_email=rep.email, members=[(CUSTOMER[0], "primary"), (SPOUSE[0], "additional")])
    db.session.commit()
    others = []
    for n in range(26):
        first, last = FIRST[n % len(FIRST)], LAST[(n * 5 + n // len(FIRST)) % len(LAST)]
        address = f"{ascii_(first)}.{ascii_(last)}{n}@realitni-klient-{n % 4}.test"
        world.customer(f"C-2024-{n + 200:06d}", address, name=f"{first} {last}")
        others.append(address)

    me, them = box.address, (CUSTOMER[1], CUSTOMER[2])  # a name with a comma: quoted
    mail.put(me, from_=them, to=me, subject=LONG_SUBJECT, days_ago=9,
             body="Dobrý den, je byt ještě volný? Rádi bychom se přišli podívat.")
    mail.put(me, "Sent", from_=f"Petra Svobodová-Nováková <{me}>", to=them, subject="Re: " + LONG_SUBJECT,
             days_ago=8, flags=["\\Seen"], body="Dobrý den, byt je volný. Hodí se vám prohlídka ve čtvrtek v 17:00?")
    mail.put(me, from_=them, to=me, cc=(SPOUSE[1], SPOUSE[2]), days_ago=6,
             subject="Prohlídka ve čtvrtek v 17:00 – přijdeme s manželkou a s naším finančním poradcem",
             body="Čtvrtek nám vyhovuje.")
    mail.put(me, from_=them, to=me, days_ago=3,
             subject="Kupní smlouva – připomínky k článku 4 (termín předání bytu) a k článku 7 (smluvní pokuta)",
             body="V příloze posílám připomínky.",
             attachments=[("pripominky-ke-kupni-smlouve-byt-3kk-dejvice-na-hutich-12-verze-3.txt", "text/plain",
                           "Článek 4: termín předání.".encode())])
    mail.put(me, from_=them, to=me, subject="Hypotéka", days_ago=1, body="Banka potřebuje odhad ceny.")
    for n, address in enumerate(others[:6]):
        mail.put(me, from_=address, to=me, days_ago=2 + n,
                 subject=f"Nabídka č. {n + 1}: rodinný dům v Říčanech u Prahy")
    assert mail.sync(box, "backfill").status == "succeeded"
    mail.dovecot.set_password(broken.address, "changed-on-the-server")
    assert mail.sync(broken).status == "failed"

    box = db.session.get(Mailbox, box.id)
    box.smtp_host, box.smtp_port, box.smtp_security = "127.0.0.1", 2525, "none"  # never reached: nobody sends
    db.session.commit()
    outgoing, _ = accept(rep, customer, Draft(
        mailbox_id=box.id, subject="Návrh termínu podpisu kupní smlouvy u notáře JUDr. Šťastného v Praze 6",
        body="Dobrý den, navrhuji pondělí 10:00."), accounts_url="/mailboxes")
    db.session.commit()

    now = utcnow()
    lucie = world.user("lucie.kriz-novakova@crm.test", "rep", name="Lucie Kříž-Nováková")
    db.session.add_all([  # OAuth accounts as they stand after months
        Mailbox(user_id=lucie.id, address="lucie.kriz-novakova@realitni-kancelar-contoso.test", provider="microsoft",
                state="active", connected_by_id=lucie.id, connected_at=now - timedelta(days=12),
                scopes_granted=[OUTLOOK + "IMAP.AccessAsUser.All", "openid", "email", "profile", "offline_access"],
                token_refreshed_at=now - timedelta(minutes=20), token_expires_at=now + timedelta(minutes=40)),
        Mailbox(user_id=lucie.id, address="lucie.kriz.novakova.pronajmy@gmail.test", provider="google",
                state="problematic", reason="token_revoked", connected_by_id=lucie.id,
                connected_at=now - timedelta(days=40), scopes_granted=["https://mail.google.com/", "openid", "email"],
                token_refreshed_at=now - timedelta(days=2), token_expires_at=now - timedelta(days=2),
                token_refresh_failures=4),
    ])
    db.session.commit()
    for local in ("bohumil.kriz", "svatopluk.navratil-dvoracek", "drahomira.vesela"):
        world.user(f"{local}@crm.test", "rep", name=local.replace(".", " ").title())
    email_id = db.session.query(Email).filter(Email.subject == LONG_SUBJECT).one().id
    webhook_id = webhook_with_a_log(world, box.id)
    return Demo(rep=rep, support=world.user("samuel.podpora-hlavni@crm.test", "support", name="Samuel Podpora"),
                it=world.user("ivan.spravce-site@crm.test", "it", name="Ivan Správce"),
                admin=world.user("adela.administratorka@crm.test", "admin", name="Adéla Administrátorka"),
                box=box, broken=db.session.get(Mailbox, broken.id), customer_id=CUSTOMER[0],
                email_id=email_id, outgoing_id=outgoing.id, webhook_id=webhook_id)


def webhook_with_a_log(world, mailbox_id: int) -> int:
    """The CRM's endpoint (a long URL) and a refused event with its attempts, as rows: the
    host does not resolve here, so the product would not save it."""
    from portal.models.webhooks import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent

    endpoint = WebhookEndpoint(url="https://crm.realitni-kancelar-contoso.test/api/integrace/webhooks/"
                                   "email-integration-service?pobocka=praha-6-dejvice&verze=2",
                               event_types=["activity.logged", "mailbox.state_changed"], enabled=True,
                               description="CRM realitní kanceláře – pobočka Praha 6 Dejvice")
    event = WebhookEvent(id="evt_" + "7" * 32, type="mailbox.state_changed", mailbox_id=mailbox_id,
                         data={"mailbox_id": mailbox_id})
    delivery = WebhookDelivery(event=event, endpoint=endpoint, state="failed", attempts=2)
    db.session.add_all([endpoint, event, delivery])
    db.session.flush()
    db.session.add_all([
        WebhookAttempt(delivery_id=delivery.id, status_code=503, outcome="retry", duration_ms=40,
                       response_excerpt="<html><body>Služba je dočasně nedostupná – probíhá údržba " * 6),
        WebhookAttempt(delivery_id=delivery.id, status_code=None, outcome="failed", duration_ms=10000,
                       error="timed out after 10 s; ConnectionResetError: [Errno 104] Connection reset by peer"),
    ])
    db.session.commit()
    return endpoint.id


def pages_of(role: str, d: Demo, app=None) -> list[str]:
    """Every page the role can open, with the data that makes it long. Pages whose view the
    app does not have (yet) are left out, as the menu leaves them out (portal/web/nav.py)."""
    c, ok, bad, rep = d.customer_id, d.box.id, d.broken.id, d.rep.id
    everyone = [("main.index", "/"), ("main.account", "/settings"), ("mailboxes.mine", "/mailboxes"),
                ("mailboxes.connect", "/mailboxes/connect"), ("customers.index", "/customers"),
                ("customers.index", "/customers?q=nov"), ("customers.index", "/customers?page=2"),
                ("customers.detail", f"/customers/{c}"), ("customers.email", f"/emails/{d.email_id}"),
                ("send.form", f"/customers/{c}/emails/new")]
    own = [("mailboxes.detail", f"/mailboxes/{ok}"), ("mailboxes.detail", f"/mailboxes/{bad}"),
           ("mailboxes.reconnect", f"/mailboxes/{bad}/reconnect"), ("mailboxes.delete", f"/mailboxes/{ok}/delete"),
           ("send.outgoing_state", f"/outgoing-emails/{d.outgoing_id}")]
    support = [("support.mailboxes", "/support/mailboxes"),
               ("support.mailboxes", "/support/mailboxes?state=problematic"),
               ("support.mailbox", f"/support/mailboxes/{bad}"), ("support.mailbox", f"/support/mailboxes/{ok}"),
               ("support.mailbox_status", f"/support/mailboxes/{bad}/status")]
    why = [("support.why", f"/support/mailboxes/{ok}/why"), ("support.why", f"/support/mailboxes/{ok}/why?q=Praze")]
    it = [("it.accounts", "/it/accounts"), ("it.audit", "/it/audit")]
    admin = [("admin.users", "/admin/users"), ("admin.new_user", "/admin/users/new"),
             ("admin.edit_user", f"/admin/users/{rep}"), ("admin.disable", f"/admin/users/{rep}/disable"),
             ("admin.mailboxes", "/admin/mailboxes"), ("admin.resync_confirm", "/admin/resync?scope=problematic"),
             ("admin.settings", "/admin/settings"), ("admin.health", "/admin/health"),
             ("admin.webhooks", "/admin/webhooks"), ("admin.new_webhook", "/admin/webhooks/new"),
             ("admin.webhook", f"/admin/webhooks/{d.webhook_id}"),
             ("admin.edit_webhook", f"/admin/webhooks/{d.webhook_id}/edit"),
             ("admin.delete_webhook", f"/admin/webhooks/{d.webhook_id}/delete")]
    pages = everyone + {"rep": own, "support": support + why, "it": it + support,
                        "admin": admin + it + support + why}[role]
    return [path for endpoint, path in pages if app is None or endpoint in app.view_functions]


# -- measuring ------------------------------------------------------------------------------------
MEASURE = """(width) => {
  const doc = document.documentElement, problems = [];
  const name = (el) => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
    (el.classList.length ? '.' + [...el.classList].join('.') : '');
  const scrolls = (el) => ['auto', 'scroll'].includes(getComputedStyle(el).overflowX);
  const scroller = (el) => {  // the nearest box around el that scrolls sideways
    for (let p = el.parentElement; p && p !== doc; p = p.parentElement) if (scrolls(p)) return p;
    return null;
  };
  const right = (el) => Math.round(el.getBoundingClientRect().right);
  if (doc.scrollWidth > width) {
    problems.push(`page is ${doc.scrollWidth} px wide`);
    const wide = [...document.querySelectorAll('body *')].filter(el => el.getBoundingClientRect().right > width + 0.5 &&
      ![...el.children].some(k => k.getBoundingClientRect().right > width + 0.5));
    problems.push('widest: ' + wide.slice(0, 5).map(el => `${name(el)} to ${right(el)} px`).join(', '));
  }
  for (const el of document.querySelectorAll('body *')) {
    const style = getComputedStyle(el), box = el.getBoundingClientRect();
    if (style.display === 'none' || style.visibility === 'hidden' || box.width <= 1 || box.height <= 1) continue;
    if (el.closest('.skip-link') && document.activeElement !== el.closest('.skip-link')) continue;
    if (box.right > width + 0.5 && !scroller(el) && !el.closest('table') &&
        ![...el.children].some(k => k.getBoundingClientRect().right > width + 0.5))
      problems.push(`${name(el)} sticks out to ${right(el)} px`);
    if (['hidden', 'clip'].includes(style.overflowX) && el.scrollWidth > el.clientWidth + 1 &&
        !el.matches('input, select, textarea, button, iframe, img, svg, progress'))
      problems.push(`${name(el)} cuts its content (${el.scrollWidth} px in ${el.clientWidth} px)`);
  }
  const texts = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let t = texts.nextNode(); t; t = texts.nextNode()) {
    const el = t.parentElement, range = document.createRange();
    range.selectNodeContents(t);
    const box = range.getBoundingClientRect();
    if (box.width > 1 && box.right > width + 0.5 && !scroller(el) && !el.closest('table, .skip-link') &&
        getComputedStyle(el).visibility !== 'hidden')
      problems.push(`the text of ${name(el)} runs out to ${Math.round(box.right)} px`);
  }
  for (const table of document.querySelectorAll('table')) {
    const wrap = scroller(table), box = table.getBoundingClientRect();
    if (box.width <= 1) continue;
    if (!wrap && box.right > width + 0.5)
      problems.push(`${name(table)} is ${Math.round(box.width)} px wide and no box around it scrolls`);
    if (wrap && wrap.getBoundingClientRect().right > width + 0.5)
      problems.push(`the scroller of ${name(table)} is wider than the screen`);
  }
  const top = [...document.querySelectorAll('.topbar .brand, .topbar nav a, .topbar .who > span, .topbar .who button')]
    .map(el => [el, [...el.getClientRects()]]);  // an inline element that wraps: a box a line
  const meet = (ra, rb) => ra.left < rb.right - 0.5 && rb.left < ra.right - 0.5 &&
    ra.top < rb.bottom - 0.5 && rb.top < ra.bottom - 0.5;
  top.forEach(([a, ras], i) => top.slice(i + 1).forEach(([b, rbs]) => {
    if (ras.some(ra => rbs.some(rb => meet(ra, rb))))
      problems.push(`the topbar's "${a.textContent.trim()}" and "${b.textContent.trim()}" overlap`);
  }));
  const counted = new Map();
  problems.forEach(p => counted.set(p, (counted.get(p) || 0) + 1));
  return {width: doc.scrollWidth, problems: [...counted].map(([p, n]) => n > 1 ? `${p} (${n}x)` : p)};
}"""


def measure(page: Page, width: int) -> dict:
    """The page's width and what is wrong with it. A phone zooms a page that is too wide out
    to show all of it, so window.innerWidth grows too: both are checked against the screen."""
    result = page.evaluate(MEASURE, width)
    shown = page.evaluate("window.innerWidth")
    if shown != width:
        result["problems"].insert(0, f"the phone zooms out to show {shown} px")
    return result


@pytest.fixture
def phone(browser):
    """A touch phone of a given size; each call a fresh context (signed out)."""
    contexts = []

    def open_(size=PHONE) -> Person:
        context = browser.new_context(viewport=size, is_mobile=True, has_touch=True)
        contexts.append(context)
        return Person(context.new_page(), "")

    yield open_
    for context in contexts:
        context.close()


def visit_all(person: Person, base: str, paths: list[str], width: int) -> dict[str, dict]:
    seen = {}
    for path in paths:
        response = person.page.goto(base + path)
        assert response.ok, f"{path}: HTTP {response.status}"
        person.page.wait_for_load_state("load")
        seen[path] = measure(person.page, width)
        if SHOTS:  # EIS_PHONE_SHOTS=/tmp/dir: a full-page screenshot of each page, to look at
            name = f"{width}-{path.strip('/').replace('/', '_').replace('?', '_') or 'home'}.png"
            Path(SHOTS).mkdir(parents=True, exist_ok=True)
            person.page.screenshot(path=str(Path(SHOTS) / name), full_page=True)
    return seen


def report(seen: dict[str, dict], width: int) -> str:
    lines = [f"{'page':60} width at {width} px"]
    for path, result in seen.items():
        lines.append(f"{path:60} {result['width']:5}  " + "; ".join(result["problems"]))
    return "\n".join(lines)


def sign_in(person: Person, base: str, user) -> None:
    person.base_url = base
    person.sign_in(user.email, PASSWORD)


@pytest.mark.parametrize("size", [PHONE, SMALLEST], ids=["390px", "320px"])
@pytest.mark.parametrize("role", ["rep", "support", "it", "admin"])
def test_every_page_of_each_role_fits_a_phone(app, demo, live_server, phone, role, size):
    person = phone(size)
    sign_in(person, live_server, getattr(demo, role))
    seen = visit_all(person, live_server, pages_of(role, demo, app), size["width"])
    print("\n" + report(seen, size["width"]))
    assert all(not r["problems"] for r in seen.values()), report(seen, size["width"])
    person.assert_clean()


def test_the_sign_in_page_fits_the_smallest_screen(app, live_server, phone):
    person = phone(SMALLEST)
    seen = visit_all(person, live_server, ["/login"], SMALLEST["width"])
    person.page.get_by_role("button", name="Sign in").click()  # an empty form: its errors
    seen["/login (errors)"] = measure(person.page, SMALLEST["width"])
    if "auth.invitation" in app.view_functions:  # an invitation link that is no longer valid
        response = person.page.goto(live_server + "/invite/" + "x" * 40)
        assert response.status == 410
        seen["/invite/<expired>"] = measure(person.page, SMALLEST["width"])
    print("\n" + report(seen, SMALLEST["width"]))
    assert all(not r["problems"] for r in seen.values()), report(seen, SMALLEST["width"])


def test_customers_table_scrolls_inside_its_card_to_its_last_column(demo, live_server, phone):
    person = phone()
    sign_in(person, live_server, demo.rep)
    page = person.page
    page.goto(live_server + "/customers")
    table = page.locator("table.customers")
    wrap = table.locator("xpath=..")
    assert wrap.evaluate("el => el.scrollWidth > el.clientWidth"), "the table fits: nothing to scroll"
    assert wrap.evaluate("el => getComputedStyle(el).overflowX") in ("auto", "scroll"), "a finger cannot scroll it"
    wrap.evaluate("el => { el.scrollLeft = el.scrollWidth; }")
    last = page.get_by_role("columnheader", name="Last email")
    box = last.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


def test_a_customers_emails_come_before_the_send_form_on_a_phone(demo, live_server, phone):
    person = phone()
    sign_in(person, live_server, demo.rep)
    page = person.page
    page.goto(f"{live_server}/customers/{demo.customer_id}")
    first = page.locator(".activity").first
    form = page.locator("#send-email")
    expect(form).to_be_visible()
    assert first.bounding_box()["y"] + first.bounding_box()["height"] <= form.bounding_box()["y"]
    assert first.bounding_box()["y"] < PHONE["height"], "the first email is not on the first screen"

    subject = page.locator(".activity").get_by_role("link", name=LONG_SUBJECT, exact=True)
    shape = subject.evaluate("""el => { const s = getComputedStyle(el), r = el.getBoundingClientRect();
        return {width: r.width, height: r.height, line: parseFloat(s.lineHeight) || parseFloat(s.fontSize) * 1.45,
                cut: el.scrollWidth > el.clientWidth + 1 ||
                     s.textOverflow === 'ellipsis' && s.overflowX !== 'visible'}; }""")
    assert not shape["cut"], shape
    assert shape["width"] >= 0.6 * PHONE["width"] or shape["height"] >= 1.8 * shape["line"], shape
    assert page.locator("#main").bounding_box()["width"] <= PHONE["width"]

    # The customer's facts (addresses, deals) side by side or one below the other, never over each other.
    facts = page.locator(".customer-head .info-grid > div")
    assert facts.count() == 3
    boxes = [facts.nth(i).bounding_box() for i in range(facts.count())]
    for i, a in enumerate(boxes):
        assert facts.nth(i).evaluate("el => el.scrollWidth <= el.clientWidth + 1"), facts.nth(i).inner_text()
        assert a["x"] >= 0 and a["x"] + a["width"] <= PHONE["width"], a
        for b in boxes[i + 1:]:
            assert not (a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"] and
                        a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"]), (a, b)


def test_a_customer_on_a_desktop_keeps_the_timeline_left_and_the_form_right(demo, live_server, page):
    person = Person(page, live_server)
    page.set_viewport_size(DESKTOP)
    person.sign_in(demo.rep.email)
    page.goto(f"{live_server}/customers/{demo.customer_id}")
    timeline, form = page.locator("#timeline").bounding_box(), page.locator("#send-email").bounding_box()
    assert form["x"] >= timeline["x"] + timeline["width"], (timeline, form)
    assert abs(form["y"] - timeline["y"]) < 2, (timeline, form)


def outline(page: Page) -> dict:
    return page.evaluate("""() => { const s = getComputedStyle(document.activeElement);
        return {tag: document.activeElement.tagName, cls: document.activeElement.className,
                style: s.outlineStyle, width: parseFloat(s.outlineWidth), color: s.outlineColor}; }""")


def test_keyboard_focus_shows_the_skip_link_and_a_clear_outline(world, live_server, page):
    page.set_viewport_size(PHONE)
    page.goto(live_server + "/login")
    skip = page.get_by_role("link", name="Skip to main content")
    hidden = skip.bounding_box()
    assert hidden is None or hidden["width"] <= 1 or hidden["y"] + hidden["height"] <= 0, hidden
    # The sign-in form focuses Email when it opens, with a ring; before it come the brand
    # and, first of all, the skip link.
    email = page.get_by_label("Email")
    expect(email).to_be_focused()
    assert outline(page)["style"] != "none" and outline(page)["width"] >= 2, outline(page)
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    expect(skip).to_be_focused()
    shown_at_top_left(skip)
    for _ in range(6):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.tagName") == "BUTTON":
            break
    focused = outline(page)
    assert focused["tag"] == "BUTTON" and focused["style"] != "none" and focused["width"] >= 2, focused

    # Signed in, on a page that focuses nothing: the first Tab reaches the skip link, Enter
    # takes focus to the content, which shows that it has it.
    user = world.user("karel.kral@crm.test", "rep", name="Karel Král")
    Person(page, live_server).sign_in(user.email)
    page.goto(live_server + "/")
    page.keyboard.press("Tab")
    expect(skip).to_be_focused()
    shown_at_top_left(skip)
    assert outline(page)["style"] != "none"
    page.keyboard.press("Enter")
    expect(page.locator("main#main")).to_be_focused()
    assert outline(page)["style"] != "none", "main, reached by the keyboard, shows no focus"
    page.keyboard.press("Tab")
    assert page.evaluate("document.getElementById('main').contains(document.activeElement)")
    assert outline(page)["style"] != "none", outline(page)

    # Focus that a script moves after a click shows no ring: no keyboard was used.
    page.mouse.click(5, 400)
    page.evaluate("document.getElementById('main').focus()")
    expect(page.locator("main#main")).to_be_focused()
    assert outline(page)["style"] == "none"


def shown_at_top_left(skip) -> None:
    box = skip.bounding_box()
    assert box["x"] >= 0 and box["y"] >= 0 and box["width"] > 40 and box["height"] > 20, box
    assert box["x"] + box["width"] <= PHONE["width"] and box["y"] < 40, box
    assert skip.evaluate("el => document.elementFromPoint(el.getBoundingClientRect().left + 10, "
                         "el.getBoundingClientRect().top + 10) === el"), "something covers the skip link"
