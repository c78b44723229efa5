"""With the keyboard alone, as a person who cannot use a mouse: connect an IMAP account and
press Sync now. Focus follows every in-place update, and its message reaches the live region
that screen readers announce."""
import pytest
from playwright.sync_api import expect

from tests.journeys import SYNC_SECONDS

TIMEOUT = SYNC_SECONDS * 1000


def focused(page) -> dict:
    return page.evaluate("""() => {
        const e = document.activeElement;
        return {tag: e.tagName, text: (e.innerText || e.value || e.getAttribute('aria-label') || '').trim(),
                id: e.id, cls: e.className};
    }""")


def tab_to(page, name: str, limit: int = 60, back: bool = False) -> None:
    """Tab (or Shift+Tab) until the focused element's text is `name`."""
    seen = []
    for _ in range(limit):
        page.keyboard.press("Shift+Tab" if back else "Tab")
        text = " ".join(focused(page)["text"].split())
        if text == name:
            return
        seen.append(text)
    raise AssertionError(f"{name!r} cannot be reached with Tab; focused in turn: {seen}")


@pytest.fixture
def rep_at_keyboard(app, world, mail, worker_process, person):
    app.config["EIS_LIVE_POLL_SECONDS"] = 0.5
    worker_process()
    rep = world.user(f"keys-{mail.tag}@crm.test", "rep", name="Klára Klávesnicová")
    page = person.page
    page.goto(person.base_url + "/login")
    assert focused(page)["id"] == "email"  # the form starts where the typing starts
    page.keyboard.type(rep.email)
    page.keyboard.press("Tab")
    page.keyboard.type("correct horse battery")
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    return rep, person


def test_a_keyboard_alone_connects_an_imap_account_and_presses_sync_now(rep_at_keyboard, mail, world):
    rep, person = rep_at_keyboard
    page = person.page
    world.customer("C-NOVAK", "jiri.novak@klient.test", name="Jiří Novák")
    address = mail.imap_user("keys")

    tab_to(page, "My email accounts")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="My email accounts", level=1)).to_be_visible()
    tab_to(page, "✉ Any other mail server (IMAP)")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Connect an email account (IMAP)")).to_be_visible()
    assert focused(page)["id"] == "address"  # the form starts where the typing starts
    page.keyboard.type(address)
    page.keyboard.press("Tab")  # Login: the address itself
    page.keyboard.press("Tab")
    page.keyboard.type("imap-pass-1")
    page.keyboard.press("Tab")
    page.keyboard.type("127.0.0.1")
    page.keyboard.press("Tab")
    page.keyboard.press("Control+A")
    page.keyboard.type(str(mail.dovecot.imap_port))
    page.keyboard.press("Tab")
    assert focused(page)["id"] == "imap_security"
    page.keyboard.press("End")  # the last choice: None (unencrypted)
    tab_to(page, "Connect")
    page.keyboard.press("Enter")

    card = person.card(address)
    expect(card.locator(".state")).to_have_text("Active", timeout=TIMEOUT)
    mail.put(address, from_="jiri.novak@klient.test", to=address, subject="Dotaz", days_ago=0)
    tab_to(page, "Sync now")
    page.keyboard.press("Enter")
    notice = card.locator(".card-notice")
    expect(notice).to_contain_text(f"Sync of {address} queued.")
    # Focus is on what changed, not lost to the page; the live region says it.
    expect(notice).to_be_focused()
    expect(page.locator("#live-region")).to_contain_text(f"Sync of {address} queued.")
    expect(card.locator(".card-notice")).to_contain_text("Synced", timeout=TIMEOUT)
    expect(page.locator("#live-region")).to_contain_text("Synced: 1 new email logged.")
    person.audit("keyboard: after Sync now")


def test_after_delete_the_next_tab_reaches_the_confirmation_buttons(rep_at_keyboard, mail):
    rep, person = rep_at_keyboard
    page = person.page
    box = mail.link(rep, mail.imap_user("delete"))
    page.goto(person.base_url + "/mailboxes")
    tab_to(page, "Delete…")
    page.keyboard.press("Enter")
    confirm = page.get_by_role("button", name="Delete connection")
    expect(confirm).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Cancel")).to_be_focused()
    person.audit("keyboard: delete confirmation")
    page.keyboard.press("Enter")  # Cancel: the card again, focus on its heading
    expect(page.get_by_role("heading", name=box.address)).to_be_focused()
    tab_to(page, "Delete…")
    page.keyboard.press("Enter")
    expect(confirm).to_be_focused()
    page.keyboard.press("Enter")
    notice = person.card(box.address).locator(".card-notice")
    expect(notice).to_contain_text("is deleted")
    expect(notice).to_be_focused()
    expect(page.locator("#live-region")).to_contain_text("is deleted")


def test_a_skip_link_comes_first_and_focus_is_visible_on_every_kind_of_control(rep_at_keyboard):
    rep, person = rep_at_keyboard
    page = person.page
    page.goto(person.base_url + "/mailboxes")
    page.keyboard.press("Tab")
    assert focused(page)["text"] == "Skip to main content"
    expect(page.locator(".skip-link")).to_be_in_viewport()
    page.keyboard.press("Enter")
    assert focused(page)["id"] == "main"
    for name in ("My email accounts", "Connect an account", "Sign out"):
        tab_to(page, name)
        outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline not in ("none", ""), (name, outline)
