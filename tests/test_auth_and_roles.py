"""Sign-in, CSRF, cookies, and the route x role table."""
import pytest

from tests.factories import PASSWORD, csrf_from

ROLES = ("rep", "support", "it", "admin")


def test_sign_in_and_out(world, client):
    user = world.user("rep@example.test", "rep", name="Petra")
    world.login(user, client)
    page = client.get("/").get_data(as_text=True)
    assert "Petra" in page and "rep@example.test" in page
    token = csrf_from(page)
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/").status_code == 302  # back to the sign-in page


def test_wrong_password_is_refused_with_a_message(world, client):
    world.user("rep@example.test")
    token = csrf_from(client.get("/login").get_data(as_text=True))
    r = client.post("/login", data={"email": "rep@example.test", "password": "nope", "csrf_token": token})
    assert r.status_code == 400 and "Wrong email or password." in r.get_data(as_text=True)
    assert client.get("/").status_code == 302


def test_login_without_csrf_token_is_refused(world, client):
    world.user("rep@example.test")
    r = client.post("/login", data={"email": "rep@example.test", "password": PASSWORD})
    assert r.status_code == 400
    assert client.get("/").status_code == 302


def test_logout_needs_csrf(world, client):
    world.login(world.user(), client)
    assert client.post("/logout").status_code == 400
    assert client.get("/").status_code == 200


def test_disabled_user_cannot_sign_in(world, client):
    world.user("old@example.test", is_enabled=False)
    token = csrf_from(client.get("/login").get_data(as_text=True))
    r = client.post("/login", data={"email": "old@example.test", "password": PASSWORD, "csrf_token": token})
    # The same answer as a wrong password: the page does not tell who has an account.
    assert r.status_code == 400 and "Wrong email or password." in r.get_data(as_text=True)
    assert client.get("/mailboxes").status_code == 302


def test_session_cookie_is_httponly_and_samesite(world, client):
    user = world.user()
    token = csrf_from(client.get("/login").get_data(as_text=True))
    r = client.post("/login", data={"email": user.email, "password": PASSWORD, "csrf_token": token})
    cookie = next(h for h in r.headers.getlist("Set-Cookie") if h.startswith("session="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_open_redirect_after_login_is_ignored(world, client):
    user = world.user()
    token = csrf_from(client.get("/login").get_data(as_text=True))
    r = client.post("/login?next=//evil.example/x", data={"email": user.email, "password": PASSWORD, "csrf_token": token})
    assert r.headers["Location"] == "/"


def test_unknown_page_is_a_friendly_404(client):
    r = client.get("/no-such-page")
    assert r.status_code == 404 and "Back to the start page" in r.get_data(as_text=True)


# Every page route and API route, and what each role gets. Pages: 200 allowed, 403 not;
# anonymous users are sent to sign in (302). API: the status for each role's token.
# Other test modules add their routes in a ROUTE_ROLE_TABLE of the same shape
# (method, path, json body or None, {role: status}); `{theirs}` is another rep's mailbox.
# A route for machines that needs no sign-in (/healthz, /readyz, /metrics with its own token)
# says what a caller without a session gets under the key "anonymous".
ROUTE_ROLE_TABLE = [
    ("GET", "/", None, {"rep": 200, "support": 200, "it": 200, "admin": 200}),
    ("GET", "/settings", None, {"rep": 200, "support": 200, "it": 200, "admin": 200}),
    ("POST", "/settings", {"time_zone": "Mars/Olympus"}, {"rep": 400, "support": 400, "it": 400, "admin": 400}),
    ("PUT", "/api/v1/customers/C-9", {"name": "X"}, {"rep": 403, "support": 403, "it": 201, "admin": 201}),
    ("GET", "/api/v1/customers/C-1", None, {"rep": 200, "support": 200, "it": 200, "admin": 200}),
    ("PUT", "/api/v1/deals/D-9", {"name": "D", "customers": []}, {"rep": 403, "support": 403, "it": 201, "admin": 201}),
    ("GET", "/api/v1/customers/C-1/activities", None, {"rep": 200, "support": 200, "it": 200, "admin": 200}),
    ("GET", "/api/v1/openapi.json", None, {"rep": 200, "support": 200, "it": 200, "admin": 200}),
    ("GET", "/api/v1/me/mailboxes", None, {"rep": 200, "support": 200, "it": 200, "admin": 200}),
    ("POST", "/api/v1/me/mailboxes", {"address": "x"}, {"rep": 422, "support": 422, "it": 422, "admin": 422}),
    ("DELETE", "/api/v1/me/mailboxes/{theirs}", None, {"rep": 404, "support": 404, "it": 404, "admin": 404}),
    ("GET", "/api/v1/mailboxes/{theirs}", None, {"rep": 404, "support": 200, "it": 200, "admin": 200}),
    ("POST", "/api/v1/mailboxes/{theirs}/sync", None, {"rep": 404, "support": 202, "it": 403, "admin": 202}),
]


def all_route_role_rows():
    """This module's table and every other test module's ROUTE_ROLE_TABLE."""
    import importlib
    from pathlib import Path

    rows = list(ROUTE_ROLE_TABLE)
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        if path.stem == Path(__file__).stem:
            continue
        module = importlib.import_module(f"tests.{path.stem}")
        rows += getattr(module, "ROUTE_ROLE_TABLE", [])
    return rows


def someone_elses_mailbox(world) -> int:
    """An active mailbox of another rep, made without IMAP: only the access rules matter here."""
    from portal.extensions import db
    from portal.models import Mailbox

    owner = world.user("owner@example.test", "rep")
    mailbox = Mailbox(user_id=owner.id, address="owner@agency.test", provider="imap", state="active",
                      imap_host="127.0.0.1", imap_port=1, imap_security="none")
    db.session.add(mailbox)
    db.session.commit()
    return mailbox.id


def _open(client, method, path, body, headers=None):
    if body is None or path.startswith("/api/"):
        return client.open(path, method=method, json=body, headers=headers or {})
    return client.open(path, method=method, data=body, headers=headers or {})


@pytest.mark.parametrize("role", ROLES)
def test_route_role_table(world, role):
    """Pages with a signed-in session (forms carry the session's CSRF token), the API with a token."""
    world.customer("C-1", "c1@example.test")
    theirs = someone_elses_mailbox(world)
    user = world.user(f"{role}@example.test", role)
    session = world.login(user)
    token = world.token(user)
    csrf = csrf_from(session.get("/").get_data(as_text=True))
    for method, path, body, expected in all_route_role_rows():
        path = path.format(theirs=theirs)
        if path.startswith("/api/"):
            r = _open(world.app.test_client(), method, path, body, {"Authorization": f"Bearer {token}"})
        else:
            form = dict(body or {}, csrf_token=csrf) if method == "POST" else body
            r = _open(session, method, path, form, {"X-CSRFToken": csrf} if method != "GET" else None)
        assert r.status_code == expected[role], (method, path, role, r.status_code)


def test_pages_send_anonymous_users_to_sign_in(client):
    for method, path, body, expected in all_route_role_rows():
        if path.startswith("/api/"):
            continue
        r = _open(client, method, path.format(theirs=1), body)
        if "anonymous" in expected:
            assert r.status_code == expected["anonymous"], (method, path, r.status_code)
            continue
        assert r.status_code in (302, 400), (method, path, r.status_code)  # 400: POST without CSRF
        if r.status_code == 302:
            assert "/login" in r.headers["Location"], path


def test_api_without_token_is_401(client):
    for method, path, body, _ in all_route_role_rows():
        if path.startswith("/api/") and not path.endswith("openapi.json"):
            assert _open(client, method, path.format(theirs=1), body).status_code == 401, (method, path)


# Pages anyone may open, signed in or not (the invitation's own link is its key).
PUBLIC_PAGES = ("static", "auth.login", "auth.logout", "auth.invitation")


def test_every_route_is_in_a_role_table(app):
    import re

    covered = [(method, path.format(theirs=1)) for method, path, *_ in all_route_role_rows()]
    for rule in app.url_map.iter_rules():
        if rule.endpoint in PUBLIC_PAGES:
            continue
        pattern = re.compile("^" + re.sub(r"<(?:[a-z]+:)?[a-z_]+>", "[^/]+", rule.rule) + "$")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert any(m == method and pattern.match(p) for m, p in covered), \
                f"{method} {rule.rule} is missing from the role tables"


def test_navigation_shows_each_role_its_areas(world):
    for role in ROLES:
        client = world.login(world.user(f"{role}@example.test", role))
        page = client.get("/").get_data(as_text=True)
        assert f'role-{role}' in page
