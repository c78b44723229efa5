"""The IT security review, item by item (OWASP ASVS 4.0 level 2): sign-in limits and timing,
sessions that end, API tokens that expire and can be revoked, bad input as clear 4xx,
HTTPS settings, and support's reads of a mailbox audited. Both databases, real Redis.
(Address ownership: tests/test_address_policy.py; mail servers: tests/test_mail_hosts.py;
header injection: tests/test_send_headers.py.)"""
import importlib.util
import re
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import ApiToken, AuditEvent, Mailbox, User, UserSession
from portal.timeutil import utcnow
from tests.factories import PASSWORD, csrf_from


def text(response) -> str:
    return response.get_data(as_text=True)


def sign_in(client, email, password=PASSWORD, remember=False, **kwargs):
    page = text(client.get("/login", **kwargs))
    data = {"csrf_token": csrf_from(page), "email": email, "password": password}
    if remember:
        data["remember"] = "y"
    return client.post("/login", data=data, **kwargs)


# -- 2. sign-in attempts ---------------------------------------------------------------------------
def test_ten_failed_sign_ins_lock_the_account_for_fifteen_minutes_even_with_the_right_password(world, app):
    petra = world.user("petra@crm.test", "rep")
    client = app.test_client()
    for attempt in range(10):
        r = sign_in(client, "Petra@CRM.test", "wrong")
        assert r.status_code == 400 and "Wrong email or password." in text(r), attempt
    r = sign_in(client, "petra@crm.test", PASSWORD)
    assert r.status_code == 429
    assert 840 <= int(r.headers["Retry-After"]) <= 900  # about 15 minutes
    assert "Too many failed sign-ins" in text(r) and client.get("/mailboxes").status_code == 302
    # Another account from another address is not affected, nor Petra's success later.
    assert sign_in(app.test_client(), world.user("tomas@crm.test", "rep").email).status_code == 302
    failures = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "sign_in_failed")).all()
    assert len(failures) == 10 and {e.detail["email"] for e in failures} == {"petra@crm.test"}
    assert db.session.scalar(select(func.count(AuditEvent.id)).where(AuditEvent.action == "sign_in_locked")) == 1
    assert db.session.get(User, petra.id).last_seen_at is None


def test_an_unknown_address_is_limited_too_so_a_lockout_tells_nothing(world, app):
    client = app.test_client()
    for _ in range(10):
        assert sign_in(client, "nobody@crm.test", "guess").status_code == 400
    assert sign_in(client, "nobody@crm.test", "guess").status_code == 429


def test_one_client_address_is_limited_across_accounts(world, app):
    app.config["EIS_SIGNIN_MAX_FAILURES_PER_CLIENT"] = 5
    client = app.test_client()
    for n in range(5):
        assert sign_in(client, f"user{n}@crm.test", "guess").status_code == 400
    assert sign_in(client, "someone-else@crm.test", "guess").status_code == 429
    other = app.test_client()  # another client address is not held up
    other.environ_base["REMOTE_ADDR"] = "10.0.0.7"
    assert sign_in(other, world.user("ok@crm.test", "rep").email).status_code == 302


def test_the_message_is_the_same_for_a_disabled_account(world, app):
    world.user("gone@crm.test", "rep", is_enabled=False)
    r = sign_in(app.test_client(), "gone@crm.test", PASSWORD)
    assert r.status_code == 400 and "Wrong email or password." in text(r) and "disabled" not in text(r)


def test_signing_in_takes_as_long_for_an_unknown_address_as_for_a_known_one(world, app):
    app.config["EIS_PASSWORD_HASH_METHOD"] = "scrypt"  # the production cost, for this test
    known = world.user("known@crm.test", "rep")
    known.set_password(PASSWORD)
    db.session.commit()
    app.config["EIS_SIGNIN_MAX_FAILURES"] = app.config["EIS_SIGNIN_MAX_FAILURES_PER_CLIENT"] = 100
    client = app.test_client()
    sign_in(client, "warm-up@crm.test", "x")

    def timed(email):
        start = time.perf_counter()
        assert sign_in(client, email, "not the password").status_code == 400
        return time.perf_counter() - start

    unknown = min(timed("nobody@crm.test") for _ in range(3))
    existing = min(timed("known@crm.test") for _ in range(3))
    assert unknown > existing * 0.5, (unknown, existing)  # 4.7 ms against 103 ms before


# -- 5. sessions that end --------------------------------------------------------------------------
def test_a_session_cookie_saved_before_sign_out_no_longer_works_after_it(world, app):
    rep = world.user("petra@crm.test", "rep")
    client = app.test_client()
    assert sign_in(client, rep.email).status_code == 302
    saved = client.get_cookie("session").value
    page = text(client.get("/mailboxes"))
    client.post("/logout", data={"csrf_token": csrf_from(page)})
    replay = app.test_client()
    replay.set_cookie("session", saved)
    assert replay.get("/mailboxes").status_code == 302
    assert db.session.scalar(select(UserSession.revoked_at)) is not None


def test_the_remember_me_cookie_is_new_at_each_sign_in_lasts_as_set_and_ends_with_sign_out(world, app):
    app.config["EIS_REMEMBER_DAYS"] = 3
    rep = world.user("petra@crm.test", "rep")
    cookies = []
    for _ in range(2):
        client = app.test_client()
        assert sign_in(client, rep.email, remember=True).status_code == 302
        cookies.append(client.get_cookie("remember_token"))
    assert cookies[0].value != cookies[1].value
    assert timedelta(days=2, hours=23) < cookies[1].expires - utcnow().astimezone() < timedelta(days=3, hours=1)
    page = text(client.get("/mailboxes"))
    client.post("/logout", data={"csrf_token": csrf_from(page)})
    only_cookie = app.test_client()
    only_cookie.set_cookie("remember_token", cookies[1].value)
    assert only_cookie.get("/mailboxes").status_code == 302
    still = app.test_client()  # the first browser is still signed in: its own session
    still.set_cookie("remember_token", cookies[0].value)
    assert still.get("/mailboxes").status_code == 200


def test_the_csrf_token_is_renewed_at_sign_in(world, app):
    rep = world.user("petra@crm.test", "rep")
    client = app.test_client()
    before = csrf_from(text(client.get("/login")))
    client.post("/login", data={"csrf_token": before, "email": rep.email, "password": PASSWORD})
    after = csrf_from(text(client.get("/mailboxes")))
    r = client.post("/logout", data={"csrf_token": before})
    assert before != after and r.status_code == 400  # the pre-sign-in token no longer counts


def test_api_tokens_expire_have_a_last_used_time_and_are_listed_and_revoked_from_the_cli(world, app):
    rep = world.user("petra@crm.test", "rep")
    result = app.test_cli_runner().invoke(args=["eis", "token", "create", "--user", rep.email, "--days", "2"])
    assert result.exit_code == 0, result.output
    token = result.output.strip().splitlines()[0]
    assert token.startswith("eis_") and "expires" in result.output
    api = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    assert api.get("/api/v1/me/mailboxes", headers=headers).status_code == 200
    row = db.session.scalars(select(ApiToken)).one()
    assert row.last_used_at is not None and timedelta(days=1) < row.expires_at - utcnow() <= timedelta(days=2)
    listed = app.test_cli_runner().invoke(args=["eis", "token", "list"])
    assert row.prefix in listed.output and "live" in listed.output

    row.expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    assert api.get("/api/v1/me/mailboxes", headers=headers).status_code == 401
    row.expires_at = utcnow() + timedelta(days=1)
    db.session.commit()
    revoked = app.test_cli_runner().invoke(args=["eis", "token", "revoke", row.prefix])
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    assert api.get("/api/v1/me/mailboxes", headers=headers).status_code == 401
    assert "revoked" in app.test_cli_runner().invoke(args=["eis", "token", "list", "--all"]).output


def test_an_admin_sees_a_users_api_tokens_and_revokes_one(world, app):
    admin = world.user("ada@crm.test", "admin")
    rep = world.user("petra@crm.test", "rep")
    token = world.token(rep)
    client = world.login(admin)
    page = text(client.get(f"/admin/users/{rep.id}"))
    row = db.session.scalars(select(ApiToken)).one()
    assert row.prefix in page and "Revoke" in page
    r = client.post(f"/admin/users/{rep.id}/tokens/{row.id}/revoke", data={"csrf_token": csrf_from(page)})
    assert r.status_code == 302
    assert app.test_client().get("/api/v1/me/mailboxes", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert db.session.scalar(select(AuditEvent.action).where(AuditEvent.action == "api_token_revoked"))


# -- 7. 500s that should be 4xx --------------------------------------------------------------------
HUGE = 2**63


@pytest.mark.parametrize("method, path", [
    ("GET", f"/api/v1/mailboxes/{HUGE}"), ("POST", f"/api/v1/mailboxes/{HUGE}/sync"),
    ("DELETE", f"/api/v1/me/mailboxes/{HUGE}"), ("GET", f"/api/v1/outgoing-emails/{HUGE}"),
    ("GET", f"/api/v1/mailboxes/{HUGE * 10**30}"),
])
def test_ids_no_row_can_have_are_a_404_in_the_api(world, method, path):
    api = world.api(world.user("ada@crm.test", "admin"))
    r = api.client.open(path, method=method, headers=api._headers())
    assert r.status_code == 404 and r.get_json()["error"] == "not_found"


@pytest.mark.parametrize("path", [
    f"/mailboxes/{HUGE}", f"/support/mailboxes/{HUGE}", f"/emails/{HUGE}", f"/outgoing-emails/{HUGE}",
    f"/admin/users/{HUGE}", f"/oauth/microsoft/reconnect/{HUGE}",
])
def test_ids_no_row_can_have_are_a_404_on_the_pages(world, path):
    client = world.login(world.user("ada@crm.test", "admin"))
    assert client.get(path).status_code == 404


def test_json_nested_five_thousand_deep_is_a_400(world):
    api = world.api(world.user("ada@crm.test", "admin"))
    body = "[" * 5000 + "]" * 5000
    r = api.client.put("/api/v1/customers/C-1", data=body, headers={**api._headers(), "Content-Type": "application/json"})
    assert r.status_code == 400 and "nested" in r.get_json()["message"]
    assert api.get("/customers/C-1").status_code == 404  # nothing written


@pytest.mark.parametrize("where", ["json", "path", "query"])
def test_a_nul_character_anywhere_is_a_400_that_changes_nothing(world, where):
    api = world.api(world.user("ada@crm.test", "admin"))
    if where == "json":
        r = api.put("/customers/C-1", json={"name": "Jana\x00", "primary_email": "jana@klient.test"})
    elif where == "path":
        r = api.put("/customers/C-%00", json={"name": "Jana", "primary_email": "jana@klient.test"})
    else:
        r = api.get("/customers/C-1/activities?limit=%00")
    assert r.status_code == 400 and "NUL" in r.get_json()["message"]
    assert api.get("/customers/C-1").status_code == 404


def test_a_nul_character_in_a_page_form_is_a_400(world, app):
    client = app.test_client()
    page = text(client.get("/login"))
    r = client.post("/login", data={"csrf_token": csrf_from(page), "email": "a\x00@crm.test", "password": "x"})
    assert r.status_code == 400


# -- 10. HTTPS settings ----------------------------------------------------------------------------
def test_signed_in_pages_and_api_answers_are_never_stored(world, app):
    client = world.login(world.user("petra@crm.test", "rep"))
    assert client.get("/mailboxes").headers["Cache-Control"] == "no-store"
    assert world.api(world.user("it@crm.test", "it")).get("/me/mailboxes").headers["Cache-Control"] == "no-store"
    assert "no-store" not in app.test_client().get("/login").headers.get("Cache-Control", "")


def test_with_eis_https_cookies_are_secure_hsts_is_sent_and_links_are_https(database_url, redis_server, tmp_path):
    from portal import create_app
    from tests.conftest import FreshContextClient, _config, _empty_tables

    app = create_app({**_config(database_url, redis_server.url, tmp_path), "EIS_HTTPS": True})
    app.test_client_class = FreshContextClient
    with app.app_context():
        _empty_tables(db)
        user = User(email="petra@crm.test", role="rep")
        user.set_password(PASSWORD)
        db.session.add(user)
        db.session.commit()
        # Over HTTPS a form must come from our own pages: browsers send the Referer (same-origin policy).
        r = sign_in(app.test_client(), "petra@crm.test", remember=True, base_url="https://eis.test",
                    headers={"Referer": "https://evil.test/"})
        assert r.status_code == 400
        r = sign_in(app.test_client(), "petra@crm.test", remember=True, base_url="https://eis.test",
                    headers={"Referer": "https://eis.test/login"})
        assert r.status_code == 302 and r.headers["Location"].startswith(("/", "https://"))
        cookies = r.headers.getlist("Set-Cookie")
        assert {c.split("=")[0] for c in cookies} >= {"session", "remember_token"}
        assert all("Secure" in c for c in cookies), cookies
        assert r.headers["Strict-Transport-Security"].startswith("max-age=")
        with app.test_request_context("/"):
            from flask import url_for

            assert url_for("auth.login", _external=True).startswith("https://")
        db.session.remove()
        db.engine.dispose()


def test_the_demo_keeps_its_secrets_and_database_readable_by_its_user_only(tmp_path):
    spec = importlib.util.spec_from_file_location("demo", Path(__file__).resolve().parents[1] / "scripts" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    (tmp_path / "eis.sqlite3").write_bytes(b"")
    (tmp_path / "eis.sqlite3").chmod(0o644)  # as an earlier demo left it
    demo.ensure_instance_config(tmp_path)
    assert re.search(r"SECRET_KEY = '[0-9a-f]{64}'", (tmp_path / "config.py").read_text())
    for name in ("config.py", "eis.sqlite3"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name


# -- 11. audit who looks ---------------------------------------------------------------------------
def test_support_reading_a_reps_mailbox_is_an_audit_event(world, mail):
    rep, box = mail.rep_with_mailbox("petra")
    support = world.user("sam@crm.test", "support")
    client = world.login(support)
    state = box.state
    assert client.get(f"/support/mailboxes/{box.id}/why?q=nabídka").status_code == 200
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "mailbox_read_by_support"))
    assert (event.actor_id, event.target_id, event.detail["query"]) == (support.id, str(box.id), "nabídka")
    assert event.detail["address"] == box.address and db.session.get(Mailbox, box.id).state == state


# -- 9. the Activities permission in the API ---------------------------------------------------------
def test_reading_a_customer_through_the_api_needs_the_activities_permission_as_the_pages_do(world):
    world.customer("C-1", "jana@klient.test", name="Jana")
    rep = world.user("petra@crm.test", "rep", can_see_activities=False)
    api = world.api(rep)
    for path in ("/customers/C-1", "/customers/C-1/activities"):
        r = api.get(path)
        assert r.status_code == 403 and r.json["error"] == "activities_not_permitted", path
    assert world.login(rep).get("/customers/C-1").status_code == 403
    allowed = world.api(world.user("tomas@crm.test", "rep"))
    assert allowed.get("/customers/C-1").json["name"] == "Jana"
