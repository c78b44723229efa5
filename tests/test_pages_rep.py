"""The rep's pages (My email accounts) and the customers' Activities, with real mail on Dovecot."""
import re
from datetime import datetime, timedelta

import pytest
from markupsafe import escape

from portal.extensions import db
from portal.mail.errors import fix_steps, plain_words
from portal.models import Activity, Email, Mailbox, SyncRun
from portal.queue import get_redis, job_state, sync_job_id
from portal.timeutil import utcnow
from portal.web.sanitize import clean_email_html, email_document, has_remote_images
from tests.factories import csrf_from

ROLES = ("rep", "support", "it", "admin")


def everyone(status):
    return {role: status for role in ROLES}


# Another user's mailbox ({theirs}) is a 404 for everybody, admins included: these pages are
# about one's own accounts; support and IT see others' mailboxes on their own pages.
ROUTE_ROLE_TABLE = [
    ("GET", "/mailboxes", None, everyone(200)),
    ("GET", "/mailboxes/connect", None, everyone(200)),
    ("POST", "/mailboxes/connect", {"address": "not an address"}, everyone(422)),
    ("GET", "/mailboxes/{theirs}", None, everyone(404)),
    ("POST", "/mailboxes/{theirs}/sync", None, everyone(404)),
    ("GET", "/mailboxes/{theirs}/reconnect", None, everyone(404)),
    ("POST", "/mailboxes/{theirs}/reconnect", {"password": "guess"}, everyone(404)),
    ("GET", "/mailboxes/{theirs}/delete", None, everyone(404)),
    ("POST", "/mailboxes/{theirs}/delete", None, everyone(404)),
    ("GET", "/customers", None, everyone(200)),
    ("GET", "/customers/C-1", None, everyone(200)),
    ("GET", "/emails/999999", None, everyone(404)),
    ("GET", "/emails/999999/html", None, everyone(404)),
    ("GET", "/emails/999999/attachments/0", None, everyone(404)),
]

def ago(days: float) -> datetime:
    return datetime.now().astimezone() - timedelta(days=days)


PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"


@pytest.fixture
def team(mail, world):
    """Petra (a rep) with a synced mailbox holding customer mail, attachments and HTML."""
    rep, box = mail.rep_with_mailbox("petra")
    rep.name = "Petra Svobodová"
    db.session.commit()
    world.customer("C-NOVAK", "jiri.novak@klient.test", name="Jiří Novák", additional=["jiri.home@klient.test"])
    world.customer("C-NOVAKOVA", "jana.novakova@klient.test", name="Jana Nováková")
    world.customer("C-DVORAK", "karel.dvorak@klient.test", name="Karel Dvořák")
    world.deal("D-DEJVICE", "C-NOVAK", "C-NOVAKOVA")
    me = box.address
    mail.put(me, from_="Jiří Novák <jiri.novak@klient.test>", to=me, subject="Dotaz na byt 3+kk v Dejvicích",
             body="Dobrý den, je byt ještě volný?", days_ago=3, date=ago(3))
    mail.put(me, "Sent", from_=me, to="jiri.novak@klient.test", cc="jana.novakova@klient.test",
             subject="Re: Dotaz na byt 3+kk v Dejvicích", body="Ano, prohlídka ve čtvrtek v 17:00?",
             html="<p>Ano, <b>prohlídka</b> ve čtvrtek v 17:00?</p>", days_ago=2, date=ago(2))
    mail.put(me, from_="Jiří Novák <jiri.novak@klient.test>", to=me, subject="Smlouva k podpisu",
             body="V příloze posílám smlouvu.", days_ago=1, date=ago(1),
             attachments=[("Smlouva č. 12.pdf", "application/pdf", PDF),
                          ("../../etc/passwd", "text/plain", "root:x:0:0\n".encode())])
    run = mail.sync(box, "backfill")
    assert run.status == "succeeded", run.error_detail
    return rep, db.session.get(Mailbox, box.id)


def page(client, path, **kw):
    r = client.get(path, **kw)
    return r.status_code, r.get_data(as_text=True)


def csrf(client) -> str:
    return csrf_from(client.get("/").get_data(as_text=True))


def htmx_headers(client) -> dict:
    return {"HX-Request": "true", "X-CSRFToken": csrf(client)}


def email_id(subject: str) -> int:
    return db.session.query(Email).filter_by(subject=subject).one().id


# --- My email accounts ---------------------------------------------------------------------


def test_my_email_accounts_shows_state_last_and_next_sync(team, world):
    rep, box = team
    client = world.login(rep)
    status, html = page(client, "/mailboxes")
    assert status == 200
    assert box.address in html and 'class="state state-active"' in html and ">Active<" in html
    assert "Last successful sync" in html and "just now" in html
    assert "Next sync" in html and re.search(r"in \d+ min", html)
    assert "hx-trigger" not in html  # nothing running: no polling
    assert "imap-pass" not in html  # the password is never rendered
    assert 'title="' in html and " UTC" in html  # exact time on hover


@pytest.mark.parametrize("role", ROLES)
def test_each_role_sees_its_own_mailboxes_only(world, role):
    owner = world.user("owner@example.test", "rep")
    me = world.user(f"{role}@example.test", role)
    for user, address in ((owner, "owner@agency.test"), (me, f"{role}-box@agency.test")):
        db.session.add(Mailbox(user_id=user.id, address=address, state="active", imap_host="127.0.0.1",
                               imap_port=1, imap_security="none"))
    db.session.commit()
    status, html = page(world.login(me), "/mailboxes")
    assert status == 200 and f"{role}-box@agency.test" in html and "owner@agency.test" not in html


def connect_form(address, password, dovecot, **extra):
    return {"address": address, "login": "", "password": password, "imap_host": "127.0.0.1",
            "imap_port": str(dovecot.imap_port), "imap_security": "none", "smtp_host": "", "smtp_port": "",
            "smtp_security": "ssl", **extra}


def test_connect_with_a_wrong_password_shows_the_servers_words_and_saves_nothing(mail, world, dovecot):
    address = mail.imap_user("pavel")
    rep = world.user("pavel@crm.test", "rep")
    client = world.login(rep)
    r = client.post("/mailboxes/connect", data={**connect_form(address, "wrong", dovecot), "csrf_token": csrf(client)})
    html = r.get_data(as_text=True)
    assert r.status_code == 422
    assert "Not connected." in html and "refused the login and password" in html
    assert "AUTHENTICATIONFAILED" in html  # the server's own words
    assert 'value="wrong"' not in html  # the password is not echoed back
    assert f'value="{address}"' in html  # the rest of the form is kept
    assert db.session.query(Mailbox).count() == 0


def test_connect_form_with_bad_input_is_the_form_again_with_messages(world, client):
    rep = world.user()
    world.login(rep, client)
    token = csrf(client)
    r = client.post("/mailboxes/connect", data={"address": "nobody", "password": "", "imap_host": "http://x y",
                                                "imap_port": "nine", "imap_security": "bogus", "csrf_token": token})
    html = r.get_data(as_text=True)
    assert r.status_code == 422
    assert "not a valid email address" in html
    assert "Enter the mailbox&#39;s password." in html or "Enter the mailbox's password." in html
    assert "Enter a server name" in html and "Not a valid integer value" in html
    assert "Not a valid choice" in html
    assert db.session.query(Mailbox).count() == 0
    # Without the CSRF token nothing happens at all.
    assert client.post("/mailboxes/connect", data={"address": "a@b.test"}).status_code == 400


def test_connect_through_the_form_queues_the_backfill_and_the_card_polls_until_active(mail, world, dovecot):
    address = mail.imap_user("lucie")
    mail.put(address, from_="Karel Dvořák <karel.dvorak@klient.test>", to=address, subject="Rodinný dům v Říčanech")
    world.customer("C-DVORAK", "karel.dvorak@klient.test", name="Karel Dvořák")
    rep = world.user("lucie@crm.test", "rep")
    client = world.login(rep)
    form = connect_form(address, "imap-pass-1", dovecot)
    r = client.post("/mailboxes/connect", data={**form, "csrf_token": csrf(client)})
    assert r.status_code == 302 and r.headers["Location"] == "/mailboxes"
    box = db.session.query(Mailbox).one()
    assert (box.user_id, box.address, box.login, box.state) == (rep.id, address, address, "pending")
    assert job_state(sync_job_id(box.id)) == "queued"

    html = client.get("/mailboxes").get_data(as_text=True)
    assert "is connected" in html and "Connecting" in html and "Queued" in html
    assert f'hx-get="/mailboxes/{box.id}"' in html and 'hx-trigger="every 2s"' in html

    # While it back-fills, the card says how far it got.
    run = SyncRun(mailbox_id=box.id, trigger="backfill", phase="back-filling INBOX", progress_done=120,
                  progress_total=480)
    db.session.add(run)
    db.session.commit()
    frag = client.get(f"/mailboxes/{box.id}", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert frag.lstrip().startswith("<article") and "Back-filling 120 of 480" in frag and "every 2s" in frag
    db.session.delete(run)
    db.session.commit()

    mail.work()
    frag = client.get(f"/mailboxes/{box.id}", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert ">Active<" in frag and "hx-trigger" not in frag  # done: the polling stops
    assert ("C-DVORAK", "Rodinný dům v Říčanech") in mail.activities()


def test_sync_now_is_idempotent(team, world):
    rep, box = team
    client = world.login(rep)
    token = csrf(client)
    r = client.post(f"/mailboxes/{box.id}/sync", data={"csrf_token": token})
    assert r.status_code == 302
    assert "queued." in client.get("/mailboxes").get_data(as_text=True)
    assert job_state(sync_job_id(box.id)) == "queued"
    # htmx: the refreshed card, saying it was already queued, polling while it is.
    r = client.post(f"/mailboxes/{box.id}/sync", headers=htmx_headers(client))
    frag = r.get_data(as_text=True)
    assert r.status_code == 200 and "already queued or running" in frag and "every 2s" in frag
    assert "HX-Request" in r.headers["Vary"]
    assert len(get_redis().lrange("rq:queue:sync", 0, -1)) == 1


def test_sync_now_needs_csrf(team, world):
    rep, box = team
    client = world.login(rep)
    assert client.post(f"/mailboxes/{box.id}/sync", headers={"HX-Request": "true"}).status_code == 400
    assert job_state(sync_job_id(box.id)) is None


def make_problematic(mail, dovecot, box, new_password="changed-by-it"):
    dovecot.set_password(box.address, new_password)
    mail.sync(box)
    box = db.session.get(Mailbox, box.id)
    assert (box.state, box.reason) == ("problematic", "auth_failed")
    return box


def test_problematic_mailbox_explains_itself_and_reconnect_keeps_checkpoints(team, world, mail, dovecot):
    rep, box = team
    checkpoints = {cp.name: (cp.id, cp.last_uid, cp.uidvalidity) for cp in box.checkpoints}
    assert checkpoints
    box = make_problematic(mail, dovecot, box)
    client = world.login(rep)

    html = client.get("/mailboxes").get_data(as_text=True)
    assert ">Problematic<" in html
    assert plain_words("auth_failed") in html
    for step in fix_steps("auth_failed"):  # the page's name a link to it
        assert str(escape(step)).replace("My email accounts", '<a href="/mailboxes">My email accounts</a>') in html
    assert "AUTHENTICATIONFAILED" in html  # the provider's own words
    assert "stopped until reconnected" in html and 'name="password"' in html
    # The banner is on every page until it is fixed.
    for path in ("/", "/customers", "/customers/C-NOVAK", f"/mailboxes/{box.id}"):
        status, other = page(client, path)
        assert status == 200 and 'id="problem-banner"' in other and box.address in other, path

    # A wrong password: the error in the card, still Problematic.
    r = client.post(f"/mailboxes/{box.id}/reconnect", data={"password": "still-wrong"}, headers=htmx_headers(client))
    frag = r.get_data(as_text=True)
    assert r.status_code == 200 and "refused the login" in frag and 'name="password"' in frag
    assert db.session.get(Mailbox, box.id).state == "problematic"

    assert 'id="problem-banner" hx-swap-oob="true"' in frag  # still Problematic: the banner stays

    # The right one: reconnected in place, the folders' checkpoints kept, the sync queued.
    mail.put(box.address, from_="jiri.novak@klient.test", to=box.address, subject="Po obnovení připojení")
    r = client.post(f"/mailboxes/{box.id}/reconnect", data={"password": "changed-by-it"},
                    headers=htmx_headers(client))
    frag = r.get_data(as_text=True)
    assert r.status_code == 200 and "is reconnected" in frag and ">Active<" in frag
    assert '<div id="problem-banner" hx-swap-oob="true" hidden></div>' in frag  # the banner goes at once
    box = db.session.get(Mailbox, box.id)
    assert box.state == "active" and box.reason is None
    assert db.session.query(Mailbox).count() == 1
    assert {cp.name: (cp.id, cp.last_uid, cp.uidvalidity) for cp in box.checkpoints} == checkpoints
    assert job_state(sync_job_id(box.id)) == "queued"
    mail.work()
    assert ("C-NOVAK", "Po obnovení připojení") in mail.activities()
    assert len(mail.activity_rows()) == len(set(mail.activity_rows()))  # nothing twice
    for path in ("/", "/mailboxes", "/customers"):
        assert '<div id="problem-banner" hidden></div>' in client.get(path).get_data(as_text=True), path


def test_reconnect_page_keeps_server_settings_and_refuses_a_working_mailbox(team, world, mail, dovecot):
    rep, box = team
    client = world.login(rep)
    r = client.get(f"/mailboxes/{box.id}/reconnect")
    assert r.status_code == 302  # active: nothing to reconnect
    box = make_problematic(mail, dovecot, box)
    status, html = page(client, f"/mailboxes/{box.id}/reconnect")
    assert status == 200 and f'value="{dovecot.imap_port}"' in html and 'value="127.0.0.1"' in html
    assert 'type="password"' in html and "changed-by-it" not in html and "imap-pass-1" not in html
    # The full form: a wrong port is refused in plain words, then the right settings reconnect.
    form = {"login": box.address, "password": "changed-by-it", "imap_host": "127.0.0.1", "imap_port": "1",
            "imap_security": "none", "smtp_host": "", "smtp_port": "", "smtp_security": "ssl",
            "csrf_token": csrf(client)}
    r = client.post(f"/mailboxes/{box.id}/reconnect", data=form)
    assert r.status_code == 422 and "could not be reached" in r.get_data(as_text=True)
    assert db.session.get(Mailbox, box.id).imap_port == dovecot.imap_port  # nothing changed
    r = client.post(f"/mailboxes/{box.id}/reconnect", data={**form, "imap_port": str(dovecot.imap_port)})
    assert r.status_code == 302 and db.session.get(Mailbox, box.id).state == "active"
    assert "is reconnected" in client.get("/mailboxes").get_data(as_text=True)


def test_delete_asks_to_confirm_and_keeps_logged_email(team, world):
    rep, box = team
    client = world.login(rep)
    before = db.session.query(Activity).count()
    status, html = page(client, f"/mailboxes/{box.id}/delete")
    assert status == 200 and "Emails already logged stay" in html and "Delete connection" in html
    assert db.session.get(Mailbox, box.id).state == "active"  # the GET changed nothing
    frag = client.get(f"/mailboxes/{box.id}/delete", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert frag.lstrip().startswith("<article") and "Emails already logged stay" in frag

    r = client.post(f"/mailboxes/{box.id}/delete", headers=htmx_headers(client))
    assert r.status_code == 200 and "is deleted" in r.get_data(as_text=True)
    box = db.session.get(Mailbox, box.id)
    assert box.state == "disconnected" and box.secret_encrypted is None
    assert db.session.query(Activity).count() == before
    html = client.get("/mailboxes").get_data(as_text=True)
    assert "Deleted connections" in html and box.address in html
    status, html = page(client, "/customers/C-NOVAK")
    assert "Smlouva k podpisu" in html  # logged email stays


def test_another_users_mailbox_is_a_404_everywhere(team, world):
    _rep, box = team
    for role in ROLES:
        other = world.login(world.user(f"other-{role}@example.test", role))
        token = csrf(other)
        for method, path in (("GET", f"/mailboxes/{box.id}"), ("POST", f"/mailboxes/{box.id}/sync"),
                             ("GET", f"/mailboxes/{box.id}/reconnect"), ("POST", f"/mailboxes/{box.id}/reconnect"),
                             ("GET", f"/mailboxes/{box.id}/delete"), ("POST", f"/mailboxes/{box.id}/delete")):
            form = {"csrf_token": token, "password": "x"} if method == "POST" else None
            r = other.open(path, method=method, data=form)
            assert r.status_code == 404, (role, method, path)
            assert "Back to the start page" in r.get_data(as_text=True)
    box = db.session.get(Mailbox, box.id)
    assert box.state == "active" and job_state(sync_job_id(box.id)) is None


def test_oauth_and_retrying_mailboxes_read_clearly_without_imap(world):
    rep = world.user("rep@example.test", "rep")
    outlook = Mailbox(user_id=rep.id, address="rep@contoso.test", provider="microsoft", state="problematic",
                      reason="token_revoked", detail="AADSTS50173: The provided grant has expired.")
    flaky = Mailbox(user_id=rep.id, address="rep@flaky.test", state="active", reason="server_unreachable",
                    detail="[Errno 111] Connection refused", imap_host="imap.flaky.test", imap_port=993,
                    imap_security="ssl", last_success_at=utcnow() - timedelta(hours=2))
    db.session.add_all([outlook, flaky])
    db.session.commit()
    client = world.login(rep)
    status, html = page(client, "/mailboxes")
    assert status == 200
    assert str(escape(plain_words("token_revoked"))) in html and "AADSTS50173" in html
    assert "Microsoft 365 / Outlook" in html and "Reconnect" in html
    assert "Retrying after: " + plain_words("server_unreachable") in html and "Connection refused" in html
    assert "2 h ago" in html
    assert page(client, f"/mailboxes/{outlook.id}/reconnect")[0] == 200
    r = client.post(f"/mailboxes/{outlook.id}/sync", headers=htmx_headers(client))
    assert r.status_code == 200 and "reconnect it first" in r.get_data(as_text=True)
    assert job_state(sync_job_id(outlook.id)) is None


# --- Customers and the Activities tab ------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_pages_for_each_role_with_real_mail(team, world, role):
    user = team[0] if role == "rep" else world.user(f"{role}@example.test", role)
    client = world.login(user)
    for path in ("/mailboxes", "/customers", "/customers/C-NOVAK", f"/emails/{email_id('Smlouva k podpisu')}"):
        status, html = page(client, path)
        assert status == 200, (role, path)
    assert "Smlouva č. 12.pdf" in html and "V příloze posílám smlouvu." in html


def test_customers_are_searched_by_name_email_and_id_and_paginated(world, client):
    for n in range(30):
        world.customer(f"C-{n:03d}", f"zakaznik{n}@klient.test", name=f"Zákazník {n:03d}")
    world.customer("X-NOVAK", "jiri.novak@klient.test", name="Jiří Novák")
    world.login(world.user(), client)
    status, html = page(client, "/customers")
    assert status == 200 and "31 customers" in html and "Page 1 of 2" in html and "Zákazník 000" in html
    assert "Zákazník 029" not in html
    html = page(client, "/customers?page=2")[1]
    assert "Zákazník 029" in html and "Page 2 of 2" in html
    assert "Page 2 of 2" in page(client, "/customers?page=99")[1]  # past the end: the last page
    assert "Page 1 of 2" in page(client, "/customers?page=zero")[1]  # nonsense: the first page
    for q in ("Novák", "JIRI.NOVAK@", "x-nov"):
        html = page(client, f"/customers?q={q}")[1]
        assert "Jiří Novák" in html and "Zákazník" not in html.split("</form>", 1)[1], q
    html = page(client, "/customers?q=100%25_")[1]
    assert "No customer matches" in html  # % and _ are literal


def test_customer_timeline_lists_logged_email_newest_first(team, world):
    rep, box = team
    client = world.login(rep)
    status, html = page(client, "/customers/C-NOVAK")
    assert status == 200 and "Jiří Novák" in html and "jiri.novak@klient.test" in html
    assert "jiri.home@klient.test" in html and "(not synced)" in html
    subjects = re.findall(r'class="subject" href="/emails/\d+">([^<]+)<', html)
    assert subjects == ["Smlouva k podpisu", "Re: Dotaz na byt 3+kk v Dejvicích", "Dotaz na byt 3+kk v Dejvicích"]
    assert "↙ In" in html and "↗ Out" in html and f"via {box.address}" in html
    assert re.search(r"</svg> 2 attachments", html)
    # The additional customer of the deal in copy gets the email too, marked as such.
    html = page(client, "/customers/C-NOVAKOVA")[1]
    assert "Re: Dotaz na byt 3+kk v Dejvicích" in html and "in copy, deal D-DEJVICE" in html
    assert page(client, "/customers/NOPE")[0] == 404


def test_timeline_loads_more_with_htmx(world, client):
    from portal.models import Customer

    customer = world.customer("C-MANY", "many@klient.test", name="Mnoho Zpráv")
    for n in range(30):
        email = Email(dedupe_key=f"<m{n}@x>", subject=f"Zpráva {n:02d}", from_addr="many@klient.test",
                      to_addrs=[], cc_addrs=[], date=utcnow() - timedelta(hours=n), attachments=[])
        email.activities.append(Activity(customer_id=customer.id, direction="in", matched_field="from",
                                         matched_address="many@klient.test", email_date=email.date))
        db.session.add(email)
    db.session.commit()
    world.login(world.user(), client)
    html = page(client, "/customers/C-MANY")[1]
    assert "Zpráva 00" in html and "Zpráva 24" in html and "Zpráva 25" not in html
    assert 'hx-get="/customers/C-MANY?limit=50"' in html and "Showing 25 of 30" in html
    frag = page(client, "/customers/C-MANY?limit=50", headers={"HX-Request": "true"})[1]
    assert frag.lstrip().startswith('<section id="timeline"') and "Zpráva 29" in frag and "Show older" not in frag
    assert "<html" not in frag
    assert db.session.query(Customer).count() == 1
    assert page(client, "/customers/C-MANY?limit=-5")[0] == 200


def test_opening_a_customer_syncs_the_viewers_stale_mailboxes_and_the_timeline_polls(team, world, mail):
    rep, box = team
    client = world.login(rep)
    # Just synced: nothing to do, no polling.
    html = page(client, "/customers/C-DVORAK")[1]
    assert job_state(sync_job_id(box.id)) is None and "every 5s" not in html

    box.last_sync_at = utcnow() - timedelta(minutes=3)
    db.session.commit()
    mail.put(box.address, from_="Karel Dvořák <karel.dvorak@klient.test>", to=box.address,
             subject="Odhad od banky dorazil")
    html = page(client, "/customers/C-DVORAK")[1]
    assert job_state(sync_job_id(box.id)) == "queued"
    assert 'hx-trigger="every 5s, eis:email-sent from:body"' in html and "Checking" in html
    assert "No emails logged yet" in html
    page(client, "/customers/C-DVORAK")  # opening it again does not queue twice
    assert len(get_redis().lrange("rq:queue:sync", 0, -1)) == 1

    mail.work()
    assert db.session.get(Mailbox, box.id).runs.first().trigger == "adhoc"
    frag = page(client, "/customers/C-DVORAK", headers={"HX-Request": "true"})[1]
    assert "Odhad od banky dorazil" in frag and "every 5s" not in frag  # new mail in, polling stops
    assert 'hx-trigger="eis:email-sent from:body"' in frag  # still refreshed when an email is sent
    # Another user's mailboxes are not synced by my visit.
    other = world.login(world.user("colleague@crm.test", "rep"))
    box = db.session.get(Mailbox, box.id)
    box.last_sync_at = utcnow() - timedelta(minutes=10)
    db.session.commit()
    page(other, "/customers/C-DVORAK")
    assert job_state(sync_job_id(box.id)) is None


def test_email_page_shows_participants_body_and_attachments(team, world):
    rep, box = team
    client = world.login(rep)
    eid = email_id("Re: Dotaz na byt 3+kk v Dejvicích")
    status, html = page(client, f"/emails/{eid}")
    assert status == 200
    assert box.address in html and "jiri.novak@klient.test" in html and "jana.novakova@klient.test" in html
    assert f'<iframe class="email-frame" sandbox src="/emails/{eid}/html"' in html
    assert "Plain-text version" in html and "Ano, prohlídka ve čtvrtek" in html
    assert "Jiří Novák" in html and "Jana Nováková" in html  # logged on both
    assert " UTC" in html
    html = page(client, f"/emails/{email_id('Smlouva k podpisu')}")[1]
    assert "Smlouva č. 12.pdf" in html and "<iframe" not in html and "V příloze posílám smlouvu." in html


def test_attachment_download_gives_the_original_bytes(team, world):
    rep, _ = team
    client = world.login(rep)
    eid = email_id("Smlouva k podpisu")
    r = client.get(f"/emails/{eid}/attachments/0")
    assert r.status_code == 200 and r.data == PDF
    assert r.mimetype == "application/pdf"
    disposition = r.headers["Content-Disposition"]
    assert disposition.startswith("attachment;") and "filename*=UTF-8''Smlouva%20%C4%8D.%2012.pdf" in disposition
    r = client.get(f"/emails/{eid}/attachments/1")
    assert r.data == b"root:x:0:0\n" and r.mimetype == "text/plain"
    assert "/" not in r.headers["Content-Disposition"].split("filename", 1)[1]
    assert "passwd" in r.headers["Content-Disposition"]
    assert client.get(f"/emails/{eid}/attachments/2").status_code == 404
    assert client.get(f"/emails/{eid}/attachments/-1").status_code == 404


def test_html_body_is_served_cleaned_with_a_strict_csp(team, world):
    rep, _ = team
    client = world.login(rep)
    eid = email_id("Re: Dotaz na byt 3+kk v Dejvicích")
    r = client.get(f"/emails/{eid}/html")
    assert r.status_code == 200 and r.mimetype == "text/html"
    csp = r.headers["Content-Security-Policy"]
    assert csp == "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox"
    assert r.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert "<b>prohlídka</b>" in r.get_data(as_text=True)
    assert client.get(f"/emails/{email_id('Smlouva k podpisu')}/html").status_code == 404  # no HTML part


def test_script_payloads_in_email_are_inert(mail, world):
    rep, box = mail.rep_with_mailbox("eva")
    world.customer("C-EVIL", "evil@klient.test", name="<script>alert('name')</script>")
    mail.put(box.address, from_=("<img src=x onerror=alert(1)>", "evil@klient.test"), to=box.address,
             subject="<script>alert('subject')</script>", body="<b>not bold</b>",
             html="<p onclick=alert(1)>Hi<script>alert(2)</script><a href='javascript:alert(3)'>x</a>"
                  "<img src='https://tracker.example/p.gif'><svg onload=alert(4)></svg></p>")
    mail.sync(box)
    client = world.login(rep)
    html = page(client, "/customers/C-EVIL")[1]
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#39;subject&#39;)&lt;/script&gt;" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    eid = email_id("<script>alert('subject')</script>")
    html = page(client, f"/emails/{eid}")[1]
    assert "<script>alert" not in html and "&lt;b&gt;not bold&lt;/b&gt;" in html
    assert "Images from the internet are not loaded" in html
    body = page(client, f"/emails/{eid}/html")[1]
    for bad in ("<script", "onclick", "javascript:", "tracker.example", "<svg", "onload", "alert(2)"):
        assert bad not in body, bad


def test_activities_hidden_without_the_permission(team, world):
    user = world.user("noacts@example.test", "rep", can_see_activities=False)
    client = world.login(user)
    eid = email_id("Smlouva k podpisu")
    for path in ("/customers", "/customers/C-NOVAK", f"/emails/{eid}", f"/emails/{eid}/html",
                 f"/emails/{eid}/attachments/0", "/customers/NOPE", "/emails/999999"):
        status, html = page(client, path)
        assert status == 403, path
        assert "Activities permission" in html
    assert 'href="/customers"' not in client.get("/").get_data(as_text=True)
    assert page(client, "/mailboxes")[0] == 200  # their own accounts stay theirs


def test_bodies_hidden_without_the_emails_permission(team, world):
    user = world.user("noemails@example.test", "rep", can_see_emails=False)
    client = world.login(user)
    status, html = page(client, "/customers/C-NOVAK")
    assert status == 200 and "Smlouva k podpisu" in html and "Dotaz na byt 3+kk" in html
    eid = email_id("Re: Dotaz na byt 3+kk v Dejvicích")
    status, html = page(client, f"/emails/{eid}")
    assert status == 200 and "hidden by your permissions" in html
    assert "Re: Dotaz na byt 3+kk v Dejvicích" in html and "jiri.novak@klient.test" in html
    assert "<iframe" not in html and "prohlídka ve čtvrtek" not in html
    assert page(client, f"/emails/{eid}/html")[0] == 403
    aid = email_id("Smlouva k podpisu")
    html = page(client, f"/emails/{aid}")[1]
    assert "V příloze posílám" not in html and "Smlouva č. 12.pdf" not in html and "2 attachments" in html
    r = client.get(f"/emails/{aid}/attachments/0")
    assert r.status_code == 403 and r.data != PDF


def test_odd_ids_and_queries_are_404s_or_empty_results_never_500(world, client):
    world.login(world.user(), client)
    huge = "99999999999999999999"
    for path in (f"/emails/{huge}", f"/emails/{huge}/html", f"/emails/1/attachments/{huge}", f"/mailboxes/{huge}",
                 f"/mailboxes/{huge}/delete", "/customers/" + "x" * 300, "/emails/abc"):
        assert page(client, path)[0] == 404, path
    # A NUL character anywhere is a clear 400 (PostgreSQL cannot store it): the security review.
    for path in ("/customers/a%00b", "/customers?q=a%00b", "/customers?q=%00"):
        status, html = page(client, path)
        assert status == 400 and "NUL" in html, path
    assert client.post(f"/mailboxes/{huge}/sync", data={"csrf_token": csrf(client)}).status_code == 404
    world.customer("C-1", "c1@klient.test", name="Jan Novák")
    for q in ("%25", "'; DROP TABLE customers; --", "ž" * 500):
        status, html = page(client, f"/customers?q={q}")
        assert status == 200 and "No customer matches" in html, q


# --- the HTML cleaner, alone ---------------------------------------------------------------


def test_cleaner_drops_scripts_styles_and_event_handlers():
    out = clean_email_html('<p onclick="steal()" onmouseover=x>Hi<script>alert(1)</script><style>p{}</style></p>'
                           '<svg onload=alert(1)><circle/></svg><iframe src="https://x"></iframe>'
                           '<form action="https://x"><input name=a></form><object data=x></object>')
    assert out == "<p>Hi</p>"


def test_cleaner_drops_javascript_and_data_links_and_adds_rel():
    out = clean_email_html('<a href="javascript:alert(1)">a</a><a href=" JaVaScRiPt:alert(1)">b</a>'
                           '<a href="java&#x09;script:alert(1)">c</a><a href="data:text/html,<script>">d</a>'
                           '<a href="vbscript:x">e</a><a href="/admin">f</a>'
                           '<a href="https://example.com/x" target="_top">ok</a><a href="mailto:a@b.test">m</a>')
    assert "script" not in out and "data:" not in out and "/admin" not in out and "target" not in out
    assert '<a href="https://example.com/x" rel="noopener noreferrer">ok</a>' in out
    assert '<a href="mailto:a@b.test" rel="noopener noreferrer">m</a>' in out
    assert out.count('rel="noopener noreferrer"') == 8


def test_cleaner_blocks_remote_images_and_keeps_inline_ones():
    html = ('<img src="https://tracker.example/open.gif?u=1" width="1" height="1">'
            '<img src="//tracker.example/p.gif"><img src="cid:logo@x"><img src=x onerror="alert(1)">'
            '<img src="data:image/png;base64,iVBORw0KGgo=" alt="logo">'
            '<img src="data:image/svg+xml;base64,PHN2Zz4=">')
    out = clean_email_html(html)
    assert "tracker" not in out and "cid:" not in out and "onerror" not in out and "svg" not in out
    assert '<img src="data:image/png;base64,iVBORw0KGgo=" alt="logo">' in out
    assert has_remote_images(html) and not has_remote_images('<img src="data:image/png;base64,x">')


def test_cleaner_keeps_ordinary_formatting_and_safe_styles():
    html = ('<h2>Nabídka</h2><p style="color: red; background: url(https://x/y.png)">a</p>'
            '<p style="color:#123456;position:fixed">b</p><table border="1"><tr><td colspan="2">c</td></tr></table>'
            '<blockquote>q</blockquote><ul><li><b>b</b> <i>i</i> <u>u</u></li></ul><font color="red">f</font>')
    out = clean_email_html(html)
    assert "<h2>Nabídka</h2>" in out and '<td colspan="2">c</td>' in out and "<blockquote>q</blockquote>" in out
    assert "url(" not in out and "position" not in out and 'style="color:#123456"' in out
    assert '<font color="red">f</font>' in out and "<b>b</b> <i>i</i> <u>u</u>" in out
    assert email_document("<b>x</b>").startswith("<!doctype html>") and "<b>x</b>" in email_document("<b>x</b>")
    assert clean_email_html(None) == "" and clean_email_html("") == ""


# --- attachments from the stored raw message, and times, alone --------------------------------


def test_attachments_are_found_in_the_order_parse_listed_them():
    import gzip
    from email.message import EmailMessage
    from email.policy import SMTP

    from portal.mail import rawstore
    from portal.mail.parse import parse_message
    from portal.mail.attachments import attachment_bytes
    from portal.web.customers.attachments import safe_filename

    inner = EmailMessage(policy=SMTP)
    inner["From"], inner["Subject"] = "a@klient.test", "Přeposlaná zpráva"
    inner.set_content("uvnitř")
    msg = EmailMessage(policy=SMTP)
    msg["From"], msg["To"], msg["Subject"] = "a@klient.test", "b@agency.test", "Přílohy"
    msg.set_content("text")
    msg.add_alternative("<p>html</p>", subtype="html")
    msg.add_attachment(b"\x00\x01binary", maintype="application", subtype="octet-stream", filename="data.bin")
    msg.add_attachment("druhý text\n", subtype="plain", filename="poznámka.txt")
    msg.add_attachment(inner)
    raw = msg.as_bytes()
    listed = parse_message(raw).attachments
    assert [a["filename"] for a in listed] == ["data.bin", "poznámka.txt", "message.eml"]
    # Stored now (Zstandard) and by the first release (gzip): both are read.
    for stored in (rawstore.pack(raw), gzip.compress(raw)):
        assert attachment_bytes(stored, 0, listed) == b"\x00\x01binary"
        assert attachment_bytes(stored, 1, listed).decode() == "druhý text\r\n"  # as sent (CRLF)
        assert b"Subject: =?utf-8?q?P=C5=99eposlan=C3=A1_zpr=C3=A1va?=" in attachment_bytes(stored, 2, listed)
        assert attachment_bytes(stored, 3, listed) is None and attachment_bytes(None, 0, listed) is None
    assert attachment_bytes(b"not a stored message", 0, listed) is None
    assert attachment_bytes(rawstore.pack(raw)[:40], 0, listed) is None  # cut short: damaged, not a 500
    assert safe_filename("../../etc/passwd") == "passwd" and safe_filename("..\\x\\.bashrc") == "bashrc"
    assert safe_filename('a"b\r\n.pdf') == "a_b_.pdf" and safe_filename("") == "attachment"


def test_times_read_as_people_say_them():
    from zoneinfo import ZoneInfo

    from portal.web.filters import UTC, exact_time, relative_time

    now = utcnow().replace(microsecond=0)
    assert relative_time(now - timedelta(seconds=10), now) == "just now"
    assert relative_time(now - timedelta(minutes=5), now) == "5 min ago"
    assert relative_time(now + timedelta(minutes=12), now) == "in 12 min"
    assert relative_time(now - timedelta(hours=3), now) == "3 h ago"
    assert relative_time(now - timedelta(days=4), now) == "4 days ago"
    old = datetime(2025, 3, 7, 9, 5)
    assert relative_time(old, now, zone=UTC) == "7 Mar 2025" and exact_time(old, UTC) == "2025-03-07 09:05 UTC"
    assert relative_time(None) == "" and exact_time(None) == ""
    # In Prague: winter and summer time, and a UTC evening that is the next day there.
    prague = ZoneInfo("Europe/Prague")
    assert exact_time(old, prague) == "2025-03-07 10:05 CET"
    assert exact_time(datetime(2025, 7, 31, 22, 30), prague) == "2025-08-01 00:30 CEST"
    assert relative_time(datetime(2025, 7, 31, 22, 30), now, zone=prague) == "1 Aug 2025"
