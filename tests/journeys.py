"""What a person does in the portal, in Chromium: sign in with the form, move through the
menus and press the buttons by their visible names, read what the page says.

Every page a journey opens is watched: a Content Security Policy violation or a script
error fails the test (a CSP that silently blocks a form is how Connect Outlook broke).
`audit()` runs axe-core (WCAG 2.1 A and AA) on the page state the person is in; its
violations fail the test at the end, each with the state it was found in.
"""
from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Locator, Page, expect

from tests.factories import PASSWORD

SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
SYNC_SECONDS = 30  # a first sync through a real worker process, with the page polling it
WCAG = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


class Person:
    """One person at the portal in Chromium."""

    def __init__(self, page: Page, base_url: str):
        self.page, self.base_url = page, base_url
        self.problems: list[str] = []
        self.audited: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"script error: {error}"))

    def _console(self, message) -> None:
        text = message.text
        if message.type == "error" and ("Content Security Policy" in text or "Refused to" in text):
            self.problems.append(f"CSP: {text}")

    # -- moving around ------------------------------------------------------------------------
    def sign_in(self, email: str, password: str = PASSWORD) -> "Person":
        self.page.goto(self.base_url + "/login")
        self.page.get_by_label("Email").fill(email)
        self.page.get_by_label("Password").fill(password)
        self.page.get_by_role("button", name="Sign in").click()
        expect(self.page.get_by_role("button", name="Sign out")).to_be_visible()
        return self

    def sign_out(self) -> None:
        self.page.get_by_role("button", name="Sign out").click()
        expect(self.page.get_by_role("heading", name="Sign in")).to_be_visible()

    def open(self, label: str) -> None:
        """A page of the main menu, by its name."""
        self.page.get_by_role("navigation", name="Main").get_by_role("link", name=label, exact=True).click()

    def go(self, path: str) -> None:
        self.page.goto(self.base_url + path)

    def button(self, name: str, within: Locator | None = None) -> Locator:
        return (within or self.page).get_by_role("button", name=name, exact=True)

    def link(self, name: str, within: Locator | None = None) -> Locator:
        return (within or self.page).get_by_role("link", name=name, exact=True)

    # -- the rep's mailbox cards -------------------------------------------------------------------
    def card(self, address: str) -> Locator:
        """The card of one mailbox on My email accounts, found by its address heading."""
        return self.page.locator("article.mailbox").filter(has=self.page.get_by_role("heading", name=address))

    def flash(self) -> Locator:
        return self.page.locator(".flash")

    def shoot(self, name: str) -> None:
        """A screenshot for the README, taken on a desktop screen only."""
        if (self.page.viewport_size or {}).get("width", 1280) < 1000:
            return
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / name), full_page=True)

    def audit(self, state: str = "") -> None:
        """axe-core on the page as it is now (after an htmx swap too): WCAG 2.1 A and AA."""
        page = self.page
        if not page.evaluate("typeof window.axe !== 'undefined'"):
            page.add_script_tag(url=self.base_url + "/__tests__/axe.min.js")
        result = page.evaluate("""async (tags) => {
            const r = await axe.run(document, {runOnly: {type: "tag", values: tags}});
            return r.violations.map(v => `${v.id} (${v.impact}): ${v.help} -- ` +
                v.nodes.slice(0, 3).map(n => n.target.join(" ")).join(" | "));
        }""", WCAG)
        where = f"{state or page.url}"
        self.audited.append(where)
        self.problems.extend(f"axe at {where}: {violation}" for violation in result)

    def assert_clean(self) -> None:
        assert self.problems == [], "\n".join(self.problems)
