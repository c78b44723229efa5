"""The browser harness itself: Chromium signs in through the real form over HTTP."""


def test_sign_in_in_chromium(world, signed_in_page, live_server):
    user = world.user("petra@example.test", "rep", name="Petra")
    page = signed_in_page(user)
    assert "Petra" in page.inner_text("main")
    assert page.locator("nav a", has_text="Home").count() == 1
