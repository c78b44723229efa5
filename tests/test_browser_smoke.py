"""The browser harness itself: Chromium signs in through the real form over HTTP."""


def test_sign_in_in_chromium(world, signed_in_page, live_server):
    user = world.user("petra@example.test", "rep", name="Petra")
    page = signed_in_page(user)
    assert "Petra" in page.inner_text("main")
    assert page.locator("nav a", has_text="Home").count() == 1


def test_the_journeys_accessibility_check_sees_a_violation(world, person):
    """axe-core runs in the page itself (served from the portal's origin, so the CSP allows it)
    and reports what it finds: here an image without a text alternative."""
    person.sign_in(world.user("ada@example.test", "admin").email)
    person.audit("clean")
    assert person.problems == []
    person.page.evaluate("document.querySelector('main').insertAdjacentHTML('beforeend', '<img src=\"/x.png\">')")
    person.audit("with an unlabelled image")
    assert len(person.problems) == 1 and "image-alt" in person.problems[0], person.problems
    person.problems.clear()
