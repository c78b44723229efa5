"""Everyday use, with the test client: last seen and the faster sync it buys, the users page as
an honest editor (add, invite, disable), times in each user's own time zone, and words a rep
reads instead of a socket's."""
from datetime import timedelta

from sqlalchemy import select

from portal.extensions import db
from portal.models import ApiToken, AuditEvent, Mailbox, User
from portal.timeutil import utcnow
from tests.factories import PASSWORD, csrf_from


def text(response) -> str:
    return response.get_data(as_text=True)


def csrf(client) -> str:
    return csrf_from(text(client.get("/")))


# -- last seen -------------------------------------------------------------------------------------
def test_last_seen_is_written_when_a_user_uses_the_portal_at_most_once_a_minute(world):
    rep = world.user("petra@crm.test", "rep")
    assert rep.last_seen_at is None
    client = world.login(rep)
    client.get("/mailboxes")
    first = db.session.get(User, rep.id).last_seen_at
    assert first is not None and utcnow() - first < timedelta(seconds=10)

    client.get("/customers")
    assert db.session.get(User, rep.id).last_seen_at == first  # not again within the minute
    user = db.session.get(User, rep.id)
    user.last_seen_at = utcnow() - timedelta(seconds=61)
    db.session.commit()
    client.get("/")
    assert db.session.get(User, rep.id).last_seen_at > utcnow() - timedelta(seconds=10)


def test_the_api_does_not_count_as_being_seen_in_the_portal(world):
    rep = world.user("api@crm.test", "rep")
    assert world.api(rep).get("/me/mailboxes").status_code == 200
    assert db.session.get(User, rep.id).last_seen_at is None


def test_mailboxes_of_people_using_the_portal_sync_sooner(mail, world):
    """The Settings page promises it: an owner active in the last hour gets the nearer end of
    the interval range (10-30 minutes: about 12-18), a quiet one the far end (27-30)."""
    quiet_rep, quiet_box = mail.rep_with_mailbox("quiet")
    busy_rep, busy_box = mail.rep_with_mailbox("active")
    world.login(busy_rep).get("/mailboxes")  # Petra is at her desk
    for box in (quiet_box, busy_box):
        assert mail.sync(box).status == "succeeded"
    quiet = db.session.get(Mailbox, quiet_box.id)
    busy = db.session.get(Mailbox, busy_box.id)
    assert quiet.next_sync_at - quiet.last_sync_at >= timedelta(minutes=26.9)
    assert busy.next_sync_at - busy.last_sync_at <= timedelta(minutes=18.1)


# -- Admin -> Users ----------------------------------------------------------------------------------
def test_an_admin_edits_one_user_on_their_own_page_and_other_users_are_untouched(world):
    admin = world.user("ada@crm.test", "admin")
    petra = world.user("petra@crm.test", "rep")
    tomas = world.user("tomas@crm.test", "rep")
    client = world.login(admin)
    page = text(client.get(f"/admin/users/{petra.id}"))
    assert "petra@crm.test" in page and 'name="role"' in page and "tomas@crm.test" not in page
    r = client.post(f"/admin/users/{petra.id}", data={"csrf_token": csrf(client), "role": "support",
                                                       "name": "Petra Svobodová", "can_see_activities": "y"})
    assert r.status_code == 302
    petra, tomas = db.session.get(User, petra.id), db.session.get(User, tomas.id)
    assert (petra.role, petra.name, petra.can_see_emails) == ("support", "Petra Svobodová", False)
    assert (tomas.role, tomas.can_see_activities, tomas.can_see_emails) == ("rep", True, True)
    listing = text(client.get("/admin/users"))
    assert "role: rep → support" in listing and 'name="role"' not in listing  # the list edits nothing


def test_an_admin_adds_a_user_who_chooses_a_password_with_the_link_once(world, app):
    admin = world.user("ada@crm.test", "admin")
    client = world.login(admin)
    r = client.post("/admin/users/new", data={"csrf_token": csrf(client), "email": "Nova.Kolegyne@CRM.test",
                                              "name": "Nová Kolegyně", "role": "rep", "can_see_activities": "y"})
    assert r.status_code == 302
    user = db.session.scalar(select(User).where(User.email == "nova.kolegyne@crm.test"))
    assert (user.role, user.password_hash, user.can_see_emails) == ("rep", None, False)
    page = text(client.get(r.headers["Location"]))
    link = page.split('readonly value="')[1].split('"')[0]
    assert "/invite/" in link
    assert 'readonly value="' not in text(client.get(r.headers["Location"]))  # shown once

    newcomer = app.test_client()
    path = link[link.index("/invite/"):]
    form = text(newcomer.get(path))
    assert "Choose your password" in form
    r = newcomer.post(path, data={"csrf_token": csrf_from(form), "password": "short", "confirm": "short"})
    assert r.status_code == 422 and "at least 12 characters" in text(r)
    r = newcomer.post(path, data={"csrf_token": csrf_from(form), "password": "a long new password",
                                  "confirm": "a long new password"})
    assert r.status_code == 302 and "Nová Kolegyně" in text(newcomer.get("/"))
    assert newcomer.get(path).status_code == 410  # used: it works once
    actions = [e.action for e in db.session.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert actions == ["user_created", "password_chosen"]
    assert client.post("/admin/users/new", data={"csrf_token": csrf(client), "email": "nova.kolegyne@crm.test",
                                                 "role": "rep"}).status_code == 400  # one account per address


def test_disabling_a_user_ends_their_sessions_remember_me_cookie_and_tokens_at_once(world, app):
    admin = world.user("ada@crm.test", "admin")
    petra = world.user("petra@crm.test", "rep")
    token = world.token(petra)
    session = world.login(petra)
    remembered = app.test_client()
    page = text(remembered.get("/login"))
    remembered.post("/login", data={"csrf_token": csrf_from(page), "email": petra.email, "password": PASSWORD,
                                    "remember": "y"})
    remember_cookie = remembered.get_cookie("remember_token")
    assert remember_cookie is not None and session.get("/mailboxes").status_code == 200
    api = app.test_client()
    assert api.get("/api/v1/me/mailboxes", headers={"Authorization": f"Bearer {token}"}).status_code == 200

    client = world.login(admin)
    page = text(client.get(f"/admin/users/{petra.id}/disable"))
    assert "signed out at once" in page and "1 API token" in page
    r = client.post(f"/admin/users/{petra.id}/disable", data={"csrf_token": csrf(client)})
    assert r.status_code == 302

    assert session.get("/mailboxes").status_code == 302  # the session cookie no longer works
    cookie_only = app.test_client()
    cookie_only.set_cookie("remember_token", remember_cookie.value)
    assert cookie_only.get("/mailboxes").status_code == 302  # nor does remember-me
    assert api.get("/api/v1/me/mailboxes", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert db.session.scalar(select(ApiToken.revoked_at).where(ApiToken.user_id == petra.id)) is not None
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "user_disabled"))
    assert event.actor_id == admin.id and event.detail["tokens_revoked"] == 1
    # Nobody disables themselves, or the last admin.
    r = client.post(f"/admin/users/{admin.id}/disable", data={"csrf_token": csrf(client)})
    assert r.status_code == 302 and db.session.get(User, admin.id).is_enabled
    # Enabled again, Petra signs in with her password; her old tokens stay revoked.
    client.post(f"/admin/users/{petra.id}/enable", data={"csrf_token": csrf(client)})
    assert world.login(petra).get("/mailboxes").status_code == 200
    assert api.get("/api/v1/me/mailboxes", headers={"Authorization": f"Bearer {token}"}).status_code == 401


# -- time zones --------------------------------------------------------------------------------------
def test_times_show_in_the_users_own_time_zone_and_the_api_keeps_utc(world, app):
    from tests.test_pages_ops import make_mailbox

    app.config["EIS_TIME_ZONE"] = "America/New_York"  # the organisation's
    rep = world.user("petra@crm.test", "rep")
    box = make_mailbox(rep, "petra@agency.test", connected_at=utcnow().replace(month=1, day=15, hour=20, minute=30))
    client = world.login(rep)
    when = box.connected_at
    assert f'{when:%Y-%m-%d} 15:30 EST' in text(client.get("/mailboxes"))  # the organisation's zone
    assert "America/New_York" in text(client.get("/settings"))
    r = client.post("/settings", data={"csrf_token": csrf(client), "time_zone": "Europe/Prague"})
    assert r.status_code == 302 and db.session.get(User, rep.id).time_zone == "Europe/Prague"
    assert f'{when:%Y-%m-%d} 21:30 CET' in text(client.get("/mailboxes"))
    assert client.post("/settings", data={"csrf_token": csrf(client), "time_zone": "Mars/Olympus"}).status_code == 400
    data = world.api(rep).get("/me/mailboxes").get_json()["mailboxes"][0]
    assert data["connected_at"] == f"{when:%Y-%m-%dT}20:30:{when:%S}Z"  # the API keeps UTC


# -- words -------------------------------------------------------------------------------------------
def test_a_rep_reads_words_not_socket_errors_with_the_raw_text_under_details(world):
    from tests.test_pages_ops import make_mailbox

    rep = world.user("petra@crm.test", "rep")
    make_mailbox(rep, "petra@agency.test", "active", "server_unreachable", "[Errno 111] Connection refused",
                 consecutive_failures=2, smtp_host="smtp.agency.test", smtp_port=587, smtp_security="starttls")
    page = text(world.login(rep).get("/mailboxes"))
    assert "The mail server refused the connection." in page
    assert "<summary>What the server said</summary>" in page and "[Errno 111] Connection refused" in page
    assert "<summary>Server settings</summary>" in page and "IMAP 127.0.0.1:1 (unencrypted)" in page
    assert page.index("Server settings") < page.index("IMAP 127.0.0.1:1")
    assert "EIS_MICROSOFT_CLIENT_ID" not in page and "Your CRM administrator can turn it on." in page


def test_connect_form_errors_are_tied_to_their_fields(world, dovecot):
    rep = world.user("petra@crm.test", "rep")
    client = world.login(rep)
    page = text(client.get("/mailboxes/connect"))
    r = client.post("/mailboxes/connect", data={"csrf_token": csrf_from(page), "address": "not an address",
                                                "password": "", "imap_host": "127.0.0.1", "imap_port": "x",
                                                "imap_security": "none"})
    html = text(r)
    assert r.status_code == 422
    assert 'aria-invalid="true"' in html and 'aria-describedby="address-error"' in html
    assert 'id="address-error"' in html and 'aria-describedby="password-error"' in html
    address = "nobody@agency.test"
    dovecot.add_user(address, "right-password")
    r = client.post("/mailboxes/connect", data={"csrf_token": csrf_from(page), "address": address,
                                                "password": "wrong", "imap_host": "127.0.0.1",
                                                "imap_port": str(dovecot.imap_port), "imap_security": "none"})
    html = text(r)
    assert 'id="link-error"' in html and "The mail server refused the login and password." in html
    password_input = html[html.index('id="password"') - 200:html.index('id="password"') + 200]
    assert 'aria-invalid="true"' in password_input and "link-error" in password_input
