"""The rep's pages in Chromium: hostile email stays inert. (The rep's journeys, with the
README's screenshots, are in tests/test_journeys_rep.py.)"""
from playwright.sync_api import expect

from portal.extensions import db
from portal.models import Email

def no_dialogs(page):
    """Any alert/confirm/prompt means a script from an email ran: fail loudly."""
    seen = []

    def on_dialog(dialog):
        seen.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    return seen


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
