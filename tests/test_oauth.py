"""Microsoft 365 / Outlook and Google over OAuth, end to end against real parts.

A real authorization server (devservers/oauth.py, authlib's server classes) stands in for
the live Microsoft and Google endpoints; a Dovecot of its own checks every XOAUTH2 login
against that server's introspection endpoint, and an aiosmtpd sink checks SMTP XOAUTH2
tokens the same way. So the token the portal obtained through the browser flow is the
token the mail servers accept. Nothing else is replaced.
"""
import logging
import threading
from datetime import timedelta

import pytest
import requests
from sqlalchemy import select, text

from devservers import GMAIL, OUTLOOK
from portal.accounts import linking
from portal.accounts.oauth import failures, providers, tokens
from portal.accounts.sessions import open_smtp
from portal.extensions import db
from portal.models import AuditEvent, FolderCheckpoint, Mailbox
from portal.timeutil import utcnow
from tests.oauthworld import OAuthWorld
from tests.oauthworld import flashes as _flashes
from tests.oauthworld import link_with as _link_with

# The SMTP sink takes AUTH without TLS on loopback on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")

IMAP_SCOPE = OUTLOOK + "IMAP.AccessAsUser.All"
SMTP_SCOPE = OUTLOOK + "SMTP.Send"

# (method, path, form body, {role: status}); `{theirs}` is another rep's mailbox. In the role
# test no provider has a client id: connecting says "not configured" and goes back (302).
ROUTE_ROLE_TABLE = [
    ("GET", "/oauth/microsoft/connect", None, {"rep": 302, "support": 302, "it": 302, "admin": 302}),
    ("GET", "/oauth/microsoft/callback", None, {"rep": 400, "support": 400, "it": 400, "admin": 400}),
    ("GET", "/oauth/microsoft/reconnect/{theirs}", None, {"rep": 404, "support": 404, "it": 404, "admin": 404}),
]


@pytest.fixture
def ow(app, world, oauth_server, oauth_dovecot, smtp_sink):
    return OAuthWorld(app, world, oauth_server, oauth_dovecot, smtp_sink)


@pytest.fixture
def customers(world):
    world.customer("C-NOVAK", "jiri.novak@client.test", name="Jiří Novák")
    world.customer("C-DVORAK", "dvorak@client.test", name="Karel Dvořák")


# --- the whole flow ------------------------------------------------------------------------------

def test_connect_outlook_from_the_page_to_mail_synced_over_xoauth2(ow, customers):
    rep, client = ow.rep("petra")
    address = ow.address("petra")
    ow.flavour("microsoft").include_email_claim = False  # the address comes from preferred_username
    ow.mail.put(address, from_="jiri.novak@client.test", to=address, subject="Nabídka bytu", days_ago=3)
    ow.mail.put(address, from_="stranger@elsewhere.test", to=address, subject="Not a customer")

    r = ow.connect(client, "microsoft", address)

    assert r.status_code == 302 and r.headers["Location"] == "/mailboxes"
    assert f"{address} is connected with Microsoft 365 / Outlook" in _flashes(client)
    box = ow.mailbox_of(address)
    assert (box.user_id, box.connected_by_id, box.provider, box.login) == (rep.id, rep.id, "microsoft", address)
    assert (box.imap_host, box.imap_security, box.smtp_host) == ("127.0.0.1", "ssl", "127.0.0.1")
    assert providers.missing_scopes("microsoft", box.scopes_granted) == []
    assert set(box.scopes_granted) >= {IMAP_SCOPE, SMTP_SCOPE, "openid", "email", "profile", "offline_access"}
    asked = ow.flavour("microsoft").authorizations[-1]["params"]
    assert asked["code_challenge_method"] == "S256" and asked["code_challenge"] and asked["nonce"]
    assert set(asked["scope"].split()) == set(providers.REQUIRED_SCOPES["microsoft"])

    ow.mail.work()  # the callback queued the first back-fill
    db.session.expire_all()
    run = box.runs.first()
    assert run.status == "succeeded" and run.trigger == "backfill", run.error_detail
    assert ow.mail.activities() == {("C-NOVAK", "Nabídka bytu")}
    assert db.session.get(Mailbox, box.id).state == "active"
    # Dovecot asked the authorization server about the token the portal got in the flow.
    assert (address, True) in ow.server.introspections
    assert "method=XOAUTH2" in ow.dovecot.log_path.read_text()


def test_connect_google_from_the_page_to_mail_synced_over_xoauth2(ow, customers):
    rep, client = ow.rep("tomas")
    address = ow.address("tomas")
    ow.mail.put(address, from_=address, to="dvorak@client.test", subject="Prohlídka v sobotu", days_ago=2)

    r = ow.connect(client, "google", address)
    assert r.status_code == 302
    box = ow.mailbox_of(address)
    assert (box.user_id, box.provider) == (rep.id, "google")
    assert GMAIL in box.scopes_granted and providers.missing_scopes("google", box.scopes_granted) == []
    asked = ow.flavour("google").authorizations[-1]["params"]
    assert (asked["access_type"], asked["prompt"], asked["code_challenge_method"]) == ("offline", "consent", "S256")
    assert ow.tokens(box)["refresh_token"]

    ow.mail.work()
    db.session.expire_all()
    assert box.runs.first().status == "succeeded"
    assert ow.mail.activities() == {("C-DVORAK", "Prohlídka v sobotu")}


def test_one_user_may_connect_several_mailboxes(ow):
    rep, client = ow.rep("multi")
    first, second = ow.address("multi-ms"), ow.address("multi-g")
    ow.connect(client, "microsoft", first)
    ow.connect(client, "google", second)
    boxes = db.session.scalars(select(Mailbox).where(Mailbox.user_id == rep.id)).all()
    assert sorted((b.address, b.provider) for b in boxes) == sorted([(first, "microsoft"), (second, "google")])


# --- tokens ----------------------------------------------------------------------------------------

def test_expired_access_token_is_refreshed_without_the_user_noticing(ow, customers):
    """The provider expired the token early: Dovecot refuses it, the portal refreshes once and
    logs in; the rotated refresh token is stored at once and the old one is spent."""
    _, client = ow.rep("exp")
    address = ow.address("exp")
    ow.connect(client, "microsoft", address)
    box = ow.mailbox_of(address)
    assert ow.sync(box).status == "succeeded"
    before = ow.tokens(box)
    assert ow.flavour("microsoft").expire_access_tokens(address) == 1

    ow.mail.put(address, from_="dvorak@client.test", to=address, subject="After the token expired")
    run = ow.sync(box)

    assert run.status == "succeeded", run.error_detail
    assert ow.mail.activities() == {("C-DVORAK", "After the token expired")}
    after = ow.tokens(box)
    assert ow.flavour("microsoft").refreshes.count(address) == 1
    assert after["access_token"] != before["access_token"]
    assert after["refresh_token"] != before["refresh_token"]  # rotation, stored
    box = db.session.get(Mailbox, box.id)
    assert box.state == "active" and box.token_refresh_failures == 0 and box.token_refreshed_at is not None
    # The spent refresh token is refused by the provider: keeping it would have lost the mailbox.
    md = requests.get(ow.flavour("microsoft").metadata_url, timeout=5).json()
    spent = requests.post(md["token_endpoint"], timeout=5, data={
        "grant_type": "refresh_token", "refresh_token": before["refresh_token"],
        "client_id": ow.client_ids["microsoft"], "client_secret": ow.app.config["EIS_MICROSOFT_CLIENT_SECRET"]})
    assert spent.status_code == 400 and spent.json()["error"] == "invalid_grant"


def test_token_is_refreshed_shortly_before_it_expires(ow):
    _, client = ow.rep("soon")
    address = ow.address("soon")
    ow.connect(client, "google", address)
    box = ow.mailbox_of(address)
    old = ow.tokens(box)
    ow.make_due(box)

    assert ow.sync(box).status == "succeeded"
    new = ow.tokens(box)
    assert new["access_token"] != old["access_token"]
    assert new["refresh_token"] == old["refresh_token"]  # Google keeps its refresh token
    assert ow.flavour("google").refreshes.count(address) == 1
    assert db.session.get(Mailbox, box.id).token_expires_at > utcnow() + timedelta(minutes=30)


def test_one_refresh_at_a_time_per_mailbox_across_workers(ow, app):
    """Several workers find the token due at once: one refreshes, the others use its result.
    With rotation a second refresh would spend the new refresh token and lose the mailbox."""
    _, client = ow.rep("race")
    address = ow.address("race")
    ow.connect(client, "microsoft", address)
    box = ow.mailbox_of(address)
    ow.make_due(box)
    box_id = box.id  # read here: the test's session must not be used from the threads
    results, errors = [], []
    barrier = threading.Barrier(4)

    def worker():
        with app.app_context():
            try:
                mailbox = db.session.get(Mailbox, box_id)
                barrier.wait(5)
                results.append(tokens.access_token_for(mailbox))
            except Exception as exc:  # reported below
                errors.append(exc)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(results) == 4 and len(set(results)) == 1
    assert ow.flavour("microsoft").refreshes.count(address) == 1
    assert ow.tokens(box)["access_token"] == results[0]


def test_tokens_are_encrypted_at_rest(ow):
    _, client = ow.rep("crypt")
    address = ow.address("crypt")
    ow.connect(client, "google", address)
    box = ow.mailbox_of(address)
    tokens = ow.tokens(box)
    raw = db.session.execute(text("SELECT secret_encrypted FROM mailboxes WHERE id = :id"), {"id": box.id}).scalar()
    assert tokens["access_token"] not in raw and tokens["refresh_token"] not in raw
    assert tokens["access_token"] in ow.flavour("google").live_access_tokens(address)


def test_a_passing_fault_at_the_token_endpoint_is_retried_not_problematic(ow):
    _, client = ow.rep("flaky")
    address = ow.address("flaky")
    ow.connect(client, "microsoft", address)
    ow.mail.work()
    box = ow.mailbox_of(address)
    ow.flavour("microsoft").expire_access_tokens(address)
    ow.flavour("microsoft").fail_next(1, 503)

    run = ow.sync(box)
    assert run.status == "failed" and run.error_class == "server_unreachable"
    assert "HTTP 503" in run.error_detail
    box = db.session.get(Mailbox, box.id)
    assert box.state == "active" and box.consecutive_failures == 1 and box.next_sync_at is not None
    assert ow.sync(box).status == "succeeded"


def test_a_passing_fault_before_expiry_keeps_using_the_token_it_has(ow):
    _, client = ow.rep("early")
    address = ow.address("early")
    ow.connect(client, "google", address)
    box = ow.mailbox_of(address)
    old = ow.tokens(box)["access_token"]
    ow.make_due(box)
    ow.flavour("google").fail_next(1, 502)

    assert ow.sync(box).status == "succeeded"
    box = db.session.get(Mailbox, box.id)
    assert ow.tokens(box)["access_token"] == old and box.token_refresh_failures == 1
    assert ow.sync(box).status == "succeeded"  # the next one refreshes
    assert ow.tokens(box)["access_token"] != old and db.session.get(Mailbox, box.id).token_refresh_failures == 0


# --- refusals, and reconnect after each ------------------------------------------------------------------

def _mail_while_problematic_is_synced_after_reconnect(ow, client, box, subjects_before):
    ow.mail.put(box.address, from_="dvorak@client.test", to=box.address, subject="While Problematic")
    checkpoints = {c.name: c.id for c in db.session.scalars(
        select(FolderCheckpoint).where(FolderCheckpoint.mailbox_id == box.id))}
    emails_before = ow.mail.email_count()
    r = ow.reconnect(client, box)
    assert r.status_code == 302
    assert f"{box.address} is reconnected" in _flashes(client)
    again = ow.mailbox_of(box.address)
    assert again.id == box.id and again.state == "active"
    ow.mail.work()  # the reconnect queued a sync
    db.session.expire_all()
    assert again.runs.first().status == "succeeded"
    assert ow.mail.activities() == subjects_before | {("C-DVORAK", "While Problematic")}
    assert ow.mail.email_count() == emails_before + 1  # no gap, no duplicate
    assert len(ow.mail.activity_rows()) == len(subjects_before) + 1
    assert {c.name: c.id for c in again.checkpoints} == checkpoints  # the same mailbox, its checkpoints kept


def test_revoked_grant_makes_the_mailbox_problematic_and_reconnect_restores_it(ow, customers):
    _, client = ow.rep("rev")
    address = ow.address("rev")
    ow.mail.put(address, from_="dvorak@client.test", to=address, subject="Before the revocation")
    ow.connect(client, "google", address)
    box = ow.mailbox_of(address)
    ow.mail.work()
    ow.flavour("google").revoke_grant(address)

    run = ow.sync(box)

    box = db.session.get(Mailbox, box.id)
    assert run.error_class == "token_revoked"
    assert (box.state, box.reason) == ("problematic", "token_revoked")
    assert "invalid_grant" in box.detail and "Token has been expired or revoked" in box.detail
    assert box.next_sync_at is None
    _mail_while_problematic_is_synced_after_reconnect(ow, client, box, {("C-DVORAK", "Before the revocation")})


def test_connecting_the_same_account_again_reconnects_a_problematic_mailbox_in_place(ow):
    """The mailbox card says: reconnect with the Connect button; that keeps the mailbox too."""
    _, client = ow.rep("inplace")
    address = ow.address("inplace")
    ow.connect(client, "microsoft", address)
    box = ow.mailbox_of(address)
    ow.flavour("microsoft").revoke_grant(address)
    ow.sync(box)
    assert db.session.get(Mailbox, box.id).state == "problematic"

    ow.connect(client, "microsoft", address)

    again = ow.mailbox_of(address)
    assert again.id == box.id and again.state == "pending" and again.reason is None
    assert f"{address} is reconnected" in _flashes(client)


def test_gmail_scope_unticked_refuses_the_connect_and_names_it(ow):
    rep, client = ow.rep("untick")
    address = ow.address("untick")
    ow.flavour("google").untick(GMAIL)
    try:
        r = ow.connect(client, "google", address)
    finally:
        ow.flavour("google").untick()
    assert r.status_code == 302
    page = _flashes(client)
    assert "Not connected" in page and GMAIL in page
    assert db.session.scalars(select(Mailbox).where(Mailbox.address == address)).all() == []
    event = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "mailbox_connect_refused")).one()
    assert event.actor_id == rep.id
    assert (event.detail["reason"], event.detail["missing_scopes"]) == ("consent_missing", [GMAIL])


def test_microsoft_tenant_withholding_smtp_send_refuses_the_connect(ow):
    _, client = ow.rep("tenant")
    address = ow.address("tenant")
    ow.flavour("microsoft").untick(SMTP_SCOPE)
    try:
        ow.connect(client, "microsoft", address)
    finally:
        ow.flavour("microsoft").untick()
    page = _flashes(client)
    assert "Not connected" in page and SMTP_SCOPE in page
    assert db.session.scalars(select(Mailbox).where(Mailbox.address == address)).all() == []


def test_gmail_access_withdrawn_later_makes_the_mailbox_problematic_at_refresh(ow, customers):
    _, client = ow.rep("withdrawn")
    address = ow.address("withdrawn")
    ow.mail.put(address, from_="dvorak@client.test", to=address, subject="First")
    ow.connect(client, "google", address)
    box = ow.mailbox_of(address)
    ow.mail.work()
    ow.flavour("google").withdraw_scope(address, GMAIL)
    ow.make_due(box)

    run = ow.sync(box)

    box = db.session.get(Mailbox, box.id)
    assert run.error_class == "consent_missing"
    assert (box.state, box.reason) == ("problematic", "consent_missing")
    assert GMAIL in box.detail
    assert GMAIL not in box.scopes_granted
    _mail_while_problematic_is_synced_after_reconnect(ow, client, box, {("C-DVORAK", "First")})


def test_microsoft_consent_withdrawn_by_the_tenant_answers_aadsts65001(ow):
    _, client = ow.rep("aad")
    address = ow.address("aad")
    ow.connect(client, "microsoft", address)
    box = ow.mailbox_of(address)
    ow.flavour("microsoft").withdraw_scope(address, IMAP_SCOPE)
    ow.make_due(box)
    run = ow.sync(box)
    box = db.session.get(Mailbox, box.id)
    assert (run.error_class, box.state, box.reason) == ("consent_missing", "problematic", "consent_missing")
    assert "AADSTS65001" in box.detail


def test_wrong_client_secret_makes_every_mailbox_of_that_app_problematic(ow, customers, caplog):
    (_, petra), (_, tomas) = ow.rep("secret1"), ow.rep("secret2")
    a, b, g = ow.address("secret1"), ow.address("secret2"), ow.address("secret3")
    ow.connect(petra, "microsoft", a)
    ow.connect(tomas, "microsoft", b)
    ow.connect(tomas, "google", g)
    ow.mail.work()
    box_a, box_b, box_g = ow.mailbox_of(a), ow.mailbox_of(b), ow.mailbox_of(g)
    good_secret = ow.app.config["EIS_MICROSOFT_CLIENT_SECRET"]
    ow.app.config["EIS_MICROSOFT_CLIENT_SECRET"] = "a-wrong-secret"
    ow.make_due(box_a)

    with caplog.at_level(logging.CRITICAL, logger="portal.accounts.oauth.tokens"):
        run = ow.sync(box_a)

    assert run.error_class == "app_credentials_invalid"
    db.session.expire_all()
    for box in (box_a, box_b):
        assert (box.state, box.reason) == ("problematic", "app_credentials_invalid")
        assert "invalid_client" in box.detail and "AADSTS7000215" in box.detail
    assert box_g.state == "active"  # Google's app is another app
    event = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "oauth_app_credentials_invalid")).one()
    assert event.detail["provider"] == "microsoft" and sorted(event.detail["mailboxes"]) == sorted([box_a.id, box_b.id])
    assert any("OPERATOR ALERT" in r.getMessage() for r in caplog.records)

    # The operators renew the secret; the owners reconnect; nothing is lost.
    ow.app.config["EIS_MICROSOFT_CLIENT_SECRET"] = good_secret
    _mail_while_problematic_is_synced_after_reconnect(ow, petra, box_a, set())


def test_expired_client_secret_refuses_the_connect_and_alerts_operators(ow, caplog):
    _, client = ow.rep("expsecret")
    address = ow.address("expsecret")
    ow.flavour("microsoft").reject_client_secret("expired_secret")
    try:
        with caplog.at_level(logging.CRITICAL, logger="portal.accounts.oauth.tokens"):
            ow.connect(client, "microsoft", address)
    finally:
        ow.flavour("microsoft").accept_client_secret()
    page = _flashes(client)
    assert "Not connected" in page and "AADSTS7000222" in page
    assert db.session.scalars(select(Mailbox).where(Mailbox.address == address)).all() == []
    assert any("OPERATOR ALERT" in r.getMessage() for r in caplog.records)


def test_reconnect_with_another_account_is_refused_and_changes_nothing(ow):
    _, client = ow.rep("wrongacct")
    address, other = ow.address("wrongacct"), ow.address("wrongacct-other")
    ow.connect(client, "microsoft", address)
    box = ow.mailbox_of(address)
    ow.flavour("microsoft").revoke_grant(address)
    ow.sync(box)
    box = db.session.get(Mailbox, box.id)
    assert box.state == "problematic"
    secret_before = box.secret_encrypted

    ow.reconnect(client, box, account=other)

    page = _flashes(client)
    assert "Not reconnected" in page and other in page and f"choose {address}" in page
    db.session.expire_all()
    box = db.session.get(Mailbox, box.id)
    assert (box.state, box.reason, box.address, box.secret_encrypted) == (
        "problematic", "token_revoked", address, secret_before)
    assert db.session.scalars(select(Mailbox).where(Mailbox.address == other)).all() == []
    assert ow.flavour("microsoft").authorizations[-1]["params"]["login_hint"] == address


def test_delete_then_connect_again_backfills_without_duplicates(ow, customers):
    """The seed's way: delete the connection, connect the same account again."""
    rep, client = ow.rep("again")
    address = ow.address("again")
    ow.mail.put(address, from_="dvorak@client.test", to=address, subject="One")
    ow.mail.put(address, from_="jiri.novak@client.test", to=address, subject="Two")
    ow.connect(client, "google", address)
    ow.mail.work()
    first = ow.mailbox_of(address)
    linking.disconnect(first, rep)
    db.session.commit()
    ow.mail.put(address, from_="dvorak@client.test", to=address, subject="Three")

    ow.connect(client, "google", address)
    ow.mail.work()

    second = ow.mailbox_of(address)
    assert second.id != first.id and second.runs.first().status == "succeeded"
    assert ow.mail.activities() == {("C-DVORAK", "One"), ("C-NOVAK", "Two"), ("C-DVORAK", "Three")}
    assert len(ow.mail.activity_rows()) == 3 and ow.mail.email_count() == 3


# --- who may connect what -------------------------------------------------------------------------------

def test_a_callback_carrying_another_users_state_is_refused(ow):
    rep, petra = ow.rep("victim")
    _, mallory = ow.rep("mallory")
    address = ow.address("victim")
    ow.flavour("microsoft").choose_account(address)
    callback = ow.at_provider(ow.click(petra, "microsoft"))

    r = mallory.get(callback)

    assert r.status_code == 403 and "started by another user" in r.get_data(as_text=True)
    assert db.session.scalars(select(Mailbox).where(Mailbox.address == address)).all() == []
    # The user who began it still finishes, and the mailbox is hers.
    assert petra.get(callback).status_code == 302
    assert ow.mailbox_of(address).user_id == rep.id
    # A state is good once.
    assert petra.get(callback).status_code == 400


def test_a_mailbox_connected_by_another_user_is_refused(ow):
    _, first = ow.rep("owner1")
    _, second = ow.rep("owner2")
    address = ow.address("shared")
    ow.connect(first, "google", address)
    ow.connect(second, "google", address)
    assert "already connected by another user" in _flashes(second)
    assert db.session.scalars(select(Mailbox).where(Mailbox.address == address)).one().owner.email.startswith("owner1")


def test_reconnect_is_only_for_the_owners_problematic_oauth_mailbox(ow):
    _, client = ow.rep("rc-owner")
    _, other = ow.rep("rc-other")
    address = ow.address("rc-owner")
    ow.connect(client, "microsoft", address)
    box = ow.mailbox_of(address)
    assert other.get(f"/oauth/microsoft/reconnect/{box.id}").status_code == 404
    assert client.get(f"/oauth/google/reconnect/{box.id}").status_code == 404
    assert client.get(f"/oauth/microsoft/reconnect/{2**63}").status_code == 404
    r = client.get(f"/oauth/microsoft/reconnect/{box.id}")
    assert r.status_code == 302 and r.headers["Location"] == "/mailboxes"  # active: nothing to reconnect
    assert "not Problematic" in _flashes(client)


def test_problematic_oauth_mailbox_offers_reconnect_on_its_page(ow):
    _, client = ow.rep("offer")
    address = ow.address("offer")
    ow.connect(client, "google", address)
    box = ow.mailbox_of(address)
    ow.flavour("google").revoke_grant(address)
    ow.sync(box)
    for page in (f"/mailboxes/{box.id}/reconnect", "/mailboxes"):
        link = _link_with(client.get(page).get_data(as_text=True), "Reconnect")
        assert link.startswith(f"/oauth/google/reconnect/{box.id}?t=")


def test_provider_not_configured_is_shown_and_connect_is_refused_politely(ow, app):
    app.config["EIS_GOOGLE_CLIENT_ID"] = None
    _, client = ow.rep("nocfg")
    page = client.get("/mailboxes").get_data(as_text=True)
    assert "Connect Google: not configured" in page
    assert _link_with(page, "Connect Outlook").startswith("/oauth/microsoft/connect?t=")
    r = client.get("/oauth/google/connect")
    assert r.status_code == 302 and r.headers["Location"] == "/mailboxes"
    assert "not configured on this server" in _flashes(client)
    assert client.get("/oauth/yahoo/connect").status_code == 404


def test_connect_starts_only_from_a_link_the_portal_gave_this_user_in_this_session(ow, app):
    """Another site cannot start a sign-in in a rep's browser: the link carries a token bound
    to the user, the browser session, the provider and the mailbox."""
    _, client = ow.rep("nocsrf")
    _, other = ow.rep("nocsrf-other")
    mine = _link_with(client.get("/mailboxes").get_data(as_text=True), "Connect Outlook")
    theirs = _link_with(other.get("/mailboxes").get_data(as_text=True), "Connect Outlook")
    for refused in ("/oauth/microsoft/connect", "/oauth/microsoft/connect?t=forged", theirs,
                    mine.replace("/microsoft/", "/google/")):
        r = client.get(refused)
        assert r.status_code == 302 and r.headers["Location"] == "/mailboxes", refused
        assert not r.headers["Location"].startswith(ow.server.url)
    assert "expired or is not yours" in _flashes(client)
    assert client.get(mine).headers["Location"].startswith(ow.server.url)


def test_a_declined_consent_at_the_provider_is_explained(ow):
    _, client = ow.rep("declined")
    ow.flavour("microsoft").refuse_next_authorization(
        "access_denied", "AADSTS65004: User declined to consent to access the app.")
    ow.connect(client, "microsoft", ow.address("declined"))
    page = _flashes(client)
    assert "Not connected" in page and "AADSTS65004" in page


# --- sending over SMTP with XOAUTH2 -----------------------------------------------------------------------

def test_send_over_smtp_with_xoauth2_against_a_real_smtp_server(ow):
    _, client = ow.rep("sender")
    address = ow.address("sender")
    ow.connect(client, "microsoft", address)
    box = ow.mailbox_of(address)
    ow.sink.clear()
    ow.flavour("microsoft").expire_access_tokens(address)  # the first AUTH is refused: refresh once

    with open_smtp(box) as smtp:
        smtp.send(address, ["dvorak@client.test"], b"Subject: Hello\r\n\r\nOver XOAUTH2\r\n")

    assert ("XOAUTH2", address) in ow.sink.logins
    assert ow.sink.wait_for(1)[0][:2] == (address, ["dvorak@client.test"])
    assert ow.flavour("microsoft").refreshes.count(address) == 1


def test_smtp_xoauth2_refusal_keeps_the_servers_json_error(ow):
    import smtplib

    from portal.mail.smtp import SmtpSession

    with SmtpSession("127.0.0.1", ow.sink.port, "none", timeout=10) as smtp:
        with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
            smtp.login_xoauth2("nobody@agency.test", "not-a-token")
    assert caught.value.smtp_code == 535
    assert b'"status":"400"' in caught.value.smtp_error


def test_imap_xoauth2_refusal_keeps_the_servers_json_error(ow):
    from imapclient.exceptions import LoginError

    from portal.mail.errors import classify_exception
    from portal.mail.imap import ImapSession

    with ImapSession("127.0.0.1", ow.dovecot.imap_port, "none") as session:
        with pytest.raises(LoginError) as caught:
            session.login_xoauth2(ow.address("json"), "not-a-token")
    assert "[AUTHENTICATIONFAILED]" in str(caught.value) and '"status":"401"' in str(caught.value)
    assert classify_exception(caught.value).reason == "auth_failed"


# --- the pure parts ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("error, description, reason", [
    ("invalid_grant", "Token has been expired or revoked.", "token_revoked"),
    ("invalid_grant", "AADSTS50173: The provided grant has expired due to it being revoked.", "token_revoked"),
    ("invalid_grant", "AADSTS700082: The refresh token has expired due to inactivity.", "token_revoked"),
    ("invalid_grant", "AADSTS70008: The provided authorization code or refresh token has expired.", "token_revoked"),
    ("invalid_grant", "AADSTS65001: The user or administrator has not consented.", "consent_missing"),
    ("invalid_client", "AADSTS7000222: The provided client secret keys for app 'x' are expired.",
     "app_credentials_invalid"),
    ("invalid_client", "Unauthorized", "app_credentials_invalid"),
    ("unauthorized_client", None, "app_credentials_invalid"),
    ("access_denied", "The user denied access.", "consent_missing"),
    ("temporarily_unavailable", None, "server_unreachable"),
    ("server_error", "AADSTS90033: A transient error has occurred.", "server_unreachable"),
])
def test_oauth_errors_map_to_the_design_reasons(error, description, reason):
    classified = failures.classify_oauth_error(error, description)
    assert classified.reason == reason
    assert classified.refusal == (reason not in ("server_unreachable",))
    assert error in classified.detail


def _provider(name):
    return providers.Provider(name=name, label="", title=name, client_id="c", client_secret="s", metadata_url="",
                          scopes=providers.REQUIRED_SCOPES[name], authorize_params={}, imap_host="", imap_port=993,
                          imap_security="ssl", smtp_host="", smtp_port=587, smtp_security="starttls")


def test_microsoft_scopes_not_written_back_count_when_the_tokens_show_them():
    token = {"scope": f"{IMAP_SCOPE} {SMTP_SCOPE}", "id_token": "x", "refresh_token": "r"}
    granted = providers.granted_scopes(_provider("microsoft"), token)
    assert providers.missing_scopes("microsoft", granted) == []
    # At refresh there is no ID token: what was granted before still counts.
    refreshed = providers.granted_scopes(_provider("microsoft"), {"scope": IMAP_SCOPE, "refresh_token": "r2"}, granted)
    assert providers.missing_scopes("microsoft", refreshed) == [SMTP_SCOPE]


def test_google_long_scope_names_count_as_the_short_ones():
    token = {"scope": "https://mail.google.com/ openid https://www.googleapis.com/auth/userinfo.email "
                      "https://www.googleapis.com/auth/userinfo.profile"}
    assert providers.missing_scopes("google", providers.granted_scopes(_provider("google"), token)) == []
    assert providers.missing_scopes("google", ["openid", "email", "profile"]) == [GMAIL]
