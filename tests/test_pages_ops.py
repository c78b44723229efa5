"""The support, IT and admin pages: every mailbox Problematic first, one mailbox's story, "why
was / wasn't this email logged?" against real mail, connected accounts, the audit log, users,
resync with a confirm step, settings and health."""
import csv
import io
import re
from datetime import timedelta

import pytest
from rq import SimpleWorker, Worker
from sqlalchemy import event, func, insert, select

from portal import crypto, diagnose
from portal.accounts import linking, sessions
from portal.extensions import db
from portal.models import (
    Activity, AuditEvent, Email, EmailSource, FolderCheckpoint, Mailbox, MailboxStateChange, Setting, SyncRun, User,
)
from portal.queue import enqueue_sync, get_queue, get_redis, job_state, sync_job_id
from portal.timeutil import utcnow
from tests.factories import csrf_from

# (method, path, form body or None, {role: status}); `{theirs}` is another rep's active mailbox.
ROUTE_ROLE_TABLE = [
    ("GET", "/support/mailboxes", None, {"rep": 403, "support": 200, "it": 200, "admin": 200}),
    ("GET", "/support/mailboxes/{theirs}", None, {"rep": 403, "support": 200, "it": 200, "admin": 200}),
    ("GET", "/support/mailboxes/{theirs}/status", None, {"rep": 403, "support": 200, "it": 200, "admin": 200}),
    ("GET", "/support/mailboxes/{theirs}/why", None, {"rep": 403, "support": 200, "it": 403, "admin": 200}),
    # The mailbox's server (port 1) refuses: shown classified, never a 500.
    ("GET", "/support/mailboxes/{theirs}/why?q=offer", None, {"rep": 403, "support": 200, "it": 403, "admin": 200}),
    ("POST", "/support/mailboxes/{theirs}/sync", {}, {"rep": 403, "support": 302, "it": 403, "admin": 302}),
    ("GET", "/it/accounts", None, {"rep": 403, "support": 403, "it": 200, "admin": 200}),
    ("GET", "/it/accounts.csv", None, {"rep": 403, "support": 403, "it": 200, "admin": 200}),
    ("GET", "/it/audit", None, {"rep": 403, "support": 403, "it": 200, "admin": 200}),
    ("GET", "/admin/users", None, {"rep": 403, "support": 403, "it": 403, "admin": 200}),
    ("POST", "/admin/users/0", {"role": "rep"}, {"rep": 403, "support": 403, "it": 403, "admin": 404}),
    ("GET", "/admin/users/0", None, {"rep": 403, "support": 403, "it": 403, "admin": 404}),
    ("GET", "/admin/users/new", None, {"rep": 403, "support": 403, "it": 403, "admin": 200}),
    ("POST", "/admin/users/new", {"email": "not an address"}, {"rep": 403, "support": 403, "it": 403, "admin": 400}),
    ("POST", "/admin/users/0/invite", {}, {"rep": 403, "support": 403, "it": 403, "admin": 404}),
    ("GET", "/admin/users/0/disable", None, {"rep": 403, "support": 403, "it": 403, "admin": 404}),
    ("POST", "/admin/users/0/disable", {}, {"rep": 403, "support": 403, "it": 403, "admin": 404}),
    ("POST", "/admin/users/0/enable", {}, {"rep": 403, "support": 403, "it": 403, "admin": 404}),
    ("POST", "/admin/users/0/tokens/0/revoke", {}, {"rep": 403, "support": 403, "it": 403, "admin": 404}),
    ("GET", "/admin/addresses", None, {"rep": 403, "support": 403, "it": 403, "admin": 200}),
    ("GET", "/admin/addresses/release", None, {"rep": 403, "support": 403, "it": 403, "admin": 404}),
    ("POST", "/admin/addresses/release", {"address": "nobody@x.test"}, {"rep": 403, "support": 403, "it": 403, "admin": 404}),
    ("GET", "/admin/mailboxes", None, {"rep": 403, "support": 403, "it": 403, "admin": 200}),
    ("GET", "/admin/resync", None, {"rep": 403, "support": 403, "it": 403, "admin": 400}),
    ("GET", "/admin/resync?scope=problematic", None, {"rep": 403, "support": 403, "it": 403, "admin": 200}),
    ("POST", "/admin/resync", {"scope": "selected", "confirmed": "yes"},
     {"rep": 403, "support": 403, "it": 403, "admin": 400}),
    ("GET", "/admin/settings", None, {"rep": 403, "support": 403, "it": 403, "admin": 200}),
    ("POST", "/admin/settings", {"backfill_days": "many"}, {"rep": 403, "support": 403, "it": 403, "admin": 400}),
    ("GET", "/admin/health", None, {"rep": 403, "support": 403, "it": 403, "admin": 200}),
]


# -- helpers ---------------------------------------------------------------------------------------
def make_mailbox(owner, address, state="active", reason=None, detail=None, provider="imap", **fields):
    """A mailbox row without IMAP, for pages that only read the database."""
    fields.setdefault("connected_by_id", owner.id)
    mailbox = Mailbox(user_id=owner.id, address=address, provider=provider, state=state, reason=reason,
                      detail=detail, imap_host="127.0.0.1", imap_port=1, imap_security="none", **fields)
    db.session.add(mailbox)
    db.session.commit()
    return mailbox


def signed_in(world, role, email=None):
    user = world.user(email or f"{role}@example.test", role)
    return user, world.login(user)


def csrf(client) -> str:
    return csrf_from(client.get("/").get_data(as_text=True))


def text(response) -> str:
    return response.get_data(as_text=True)


def row_counts() -> dict:
    return {model.__name__: db.session.scalar(select(func.count()).select_from(model))
            for model in (Email, EmailSource, Activity, SyncRun, AuditEvent, MailboxStateChange,
                          FolderCheckpoint, Mailbox, Setting)}


class QueryCounter:
    def __init__(self, engine):
        self.engine, self.statements = engine, []

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._count)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self._count)

    def _count(self, conn, cursor, statement, *args):
        self.statements.append(statement)

    @property
    def count(self) -> int:
        return len(self.statements)


# -- support: the list -------------------------------------------------------------------------------
def test_mailbox_list_puts_problematic_first_and_filters(world):
    petra = world.user("petra@crm.test", "rep", name="Petra Malá")
    karel = world.user("karel@crm.test", "rep", name="Karel Velký")
    make_mailbox(petra, "petra@agency.test", "active")
    make_mailbox(petra, "petra.old@agency.test", "disconnected")
    make_mailbox(karel, "karel@agency.test", "problematic", "auth_failed",
                 "[AUTHENTICATIONFAILED] Authentication failed.")
    make_mailbox(karel, "karel@gmail.test", "problematic", "imap_disabled", provider="google")
    make_mailbox(karel, "new@agency.test", "pending")
    _, client = signed_in(world, "support")

    page = text(client.get("/support/mailboxes"))
    order = [m for m in re.findall(r">([a-z.]+@[a-z.]+)</a>", page) if "agency" in m or "gmail" in m]
    assert order[:2] == ["karel@gmail.test", "karel@agency.test"]  # Problematic first
    assert order.index("new@agency.test") < order.index("petra@agency.test") < order.index("petra.old@agency.test")
    assert "auth_failed" in page and "<strong>2</strong> problematic" in page

    def listed(query):
        body = text(client.get("/support/mailboxes" + query))
        return sorted(set(re.findall(r">([a-z.]+@(?:agency|gmail)\.test)</a>", body)))

    assert listed("?state=problematic") == ["karel@agency.test", "karel@gmail.test"]
    assert listed("?reason=imap_disabled") == ["karel@gmail.test"]
    assert listed("?provider=google") == ["karel@gmail.test"]
    assert listed("?owner=petra") == ["petra.old@agency.test", "petra@agency.test"]
    assert listed("?owner=VELK") == ["karel@agency.test", "karel@gmail.test", "new@agency.test"]
    assert listed("?q=old@") == ["petra.old@agency.test"]
    assert listed("?q=%25") == []  # a LIKE wildcard is searched for literally
    # Bad filters are ignored, never an error.
    assert client.get("/support/mailboxes?state=bogus&page=-3&reason=<x>").status_code == 200
    assert client.get("/support/mailboxes?page=999").status_code == 200


def test_mailbox_list_answers_htmx_with_the_list_alone(world):
    make_mailbox(world.user("petra@crm.test"), "petra@agency.test")
    _, client = signed_in(world, "support")
    r = client.get("/support/mailboxes?q=petra", headers={"HX-Request": "true"})
    body = text(r)
    assert "HX-Request" in r.headers["Vary"]
    assert body.lstrip().startswith('<section id="mailbox-list"') and "<html" not in body
    assert "petra@agency.test" in body
    restore = client.get("/support/mailboxes?q=petra",
                         headers={"HX-Request": "true", "HX-History-Restore-Request": "true"})
    assert "<html" in text(restore)


def test_ten_thousand_mailboxes_page_with_a_bounded_number_of_queries(world):
    owners = [world.user(f"rep{i}@crm.test", "rep") for i in range(20)]
    now = utcnow()
    states = ("active",) * 17 + ("pending", "disconnected", "problematic")
    rows = [
        {"user_id": owners[i % 20].id, "address": f"box{i:05d}@agency.test", "provider": "imap",
         "state": states[i % 20], "reason": "auth_failed" if states[i % 20] == "problematic" else None,
         "token_refresh_failures": 0, "consecutive_failures": 0, "connected_at": now, "created_at": now,
         "updated_at": now}
        for i in range(10_000)
    ]
    db.session.execute(insert(Mailbox), rows)
    db.session.commit()
    _, client = signed_in(world, "support")
    client.get("/support/mailboxes")  # warm the template cache

    for query in ("", "?page=2", "?page=150", "?state=active&page=40", "?q=box0999", "?owner=rep7&page=3"):
        with QueryCounter(db.engine) as counter:
            r = client.get("/support/mailboxes" + query)
        assert r.status_code == 200
        # the signed-in user, the count, one page of mailboxes with their owners, the state counts
        assert counter.count <= 5, (query, counter.statements)
    body = text(client.get("/support/mailboxes"))
    assert "of 10,000" in body and "<strong>500</strong> problematic" in body
    assert body.count('class="row-problematic"') == 50  # the first page is all Problematic
    _, it_client = signed_in(world, "it")
    it_client.get("/it/accounts")
    with QueryCounter(db.engine) as counter:
        assert it_client.get("/it/accounts?page=7").status_code == 200
    assert counter.count <= 6, counter.statements


# -- support: one mailbox ----------------------------------------------------------------------------
def test_problematic_mailbox_shows_why_history_runs_and_steps_for_who_fixes_it(mail, world):
    rep, box = mail.rep_with_mailbox("petra")
    assert mail.sync(box, "backfill").status == "succeeded"
    mail.dovecot.set_password(box.address, "changed-by-it")
    run = mail.sync(box)
    assert run.status == "failed" and db.session.get(Mailbox, box.id).state == "problematic"

    _, client = signed_in(world, "support")
    page = text(client.get(f"/support/mailboxes/{box.id}"))
    assert "Why it is Problematic" in page and "auth_failed" in page
    assert "The mail server rejected the password or sign-in." in page
    assert "[AUTHENTICATIONFAILED] Authentication failed." in page  # the provider's own words
    assert '<span class="who-badge">Mailbox owner</span>' in page  # each step says who does it
    assert "backfill" in page and "manual" in page and "succeeded" in page and "failed" in page
    assert "pending → " in page and "active → " in page  # the state history
    assert "Resync now" in page and "Why was / wasn" in page
    assert "imap-pass-1" not in page and box.secret_encrypted not in page

    _, it_client = signed_in(world, "it")
    it_page = text(it_client.get(f"/support/mailboxes/{box.id}"))
    assert "Why it is Problematic" in it_page
    assert "Resync now" not in it_page and "why-form" not in it_page  # IT reads; support acts


def test_unknown_mailbox_is_404(world):
    _, client = signed_in(world, "support")
    assert client.get("/support/mailboxes/987654").status_code == 404
    assert client.get("/support/mailboxes/987654/why?q=x").status_code == 404
    assert client.post("/support/mailboxes/987654/sync", data={"csrf_token": csrf(client)}).status_code == 404
    assert client.get("/support/mailboxes/abc").status_code == 404
    assert client.get("/support/mailboxes/" + "9" * 30).status_code == 404  # beyond any id: no overflow
    assert client.get("/support/mailboxes/0/status").status_code == 404
    assert client.get("/support/mailboxes?page=²&runs=" + "9" * 5000).status_code == 200


def test_support_sync_now_queues_one_job_and_audits_it(world):
    box = make_mailbox(world.user("petra@crm.test"), "petra@agency.test")
    support, client = signed_in(world, "support")
    token = csrf(client)
    r = client.post(f"/support/mailboxes/{box.id}/sync", data={"csrf_token": token})
    assert r.status_code == 302 and r.headers["Location"].endswith(f"/support/mailboxes/{box.id}")
    assert job_state(sync_job_id(box.id)) == "queued"
    assert "Sync queued." in text(client.get(f"/support/mailboxes/{box.id}"))
    client.post(f"/support/mailboxes/{box.id}/sync", data={"csrf_token": token})
    assert "already queued" in text(client.get(f"/support/mailboxes/{box.id}"))
    assert get_queue("sync").count == 1
    events = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "resync_asked")).all()
    assert {(e.actor_id, e.target_id) for e in events} == {(support.id, str(box.id))}
    # The status line polls while the job waits.
    status = text(client.get(f"/support/mailboxes/{box.id}/status", headers={"HX-Request": "true"}))
    assert "Sync queued" in status and 'hx-trigger="every 3s"' in status


def test_sync_now_without_csrf_is_refused(world):
    box = make_mailbox(world.user("petra@crm.test"), "petra@agency.test")
    _, client = signed_in(world, "support")
    assert client.post(f"/support/mailboxes/{box.id}/sync").status_code == 400
    assert job_state(sync_job_id(box.id)) is None


# -- why was / wasn't this email logged ------------------------------------------------------------
@pytest.fixture
def team(mail, world):
    """Petra's synced mailbox, a connected colleague, customers (one whose address changed), a deal."""
    rep, box = mail.rep_with_mailbox("petra")
    world.customer("C-NOVAK", "jiri.novak@client.test", name="Jiří Novák", additional=["jiri.private@client.test"])
    world.customer("C-NOVAKOVA", "jana.novakova@client.test", name="Jana Nováková")
    world.customer("C-DVORAK", "dvorak@client.test", name="Karel Dvořák")
    world.customer("C-MOVED", "old@client.test", name="Eva Stěhovavá")
    world.customer("C-MOVED", "new@client.test", name="Eva Stěhovavá", since=utcnow() - timedelta(days=3))
    world.deal("D-FLAT", "C-NOVAK", "C-NOVAKOVA")
    colleague = mail.imap_user("tomas")
    mail.link(world.user(f"tomas-{mail.tag}@crm.test", "rep"), colleague)
    return rep, box, colleague


def _check(box, query) -> diagnose.MessageCheck:
    result = diagnose.why(db.session.get(Mailbox, box.id), query)
    assert result.error is None, result.error
    assert len(result.checks) == 1, [c.subject for c in result.checks]
    return result.checks[0]


def _verdicts(check) -> dict[str, bool]:
    return {v.rule: v.passed for v in check.verdicts}


def test_why_a_logged_email_passes_every_rule_and_names_its_customers(mail, team, world):
    _, box, _ = team
    me = box.address
    mail.put(me, from_="Jiří Novák <jiri.novak@client.test>", to=me, cc="jana.novakova@client.test",
             subject="Nabídka bytu 3+kk", message_id="<offer-1@client.test>")
    assert mail.sync(box, "backfill").status == "succeeded"

    check = _check(box, "nabídka")
    assert _verdicts(check) == {"window": True, "folder": True, "draft": True, "internal": True, "customer": True}
    assert check.would_log and check.stored and check.stored_here and check.progress.passed
    assert sorted(s.external_id for s in check.stored_on) == ["C-NOVAK", "C-NOVAKOVA"]
    assert {(p.external_id, p.address, p.fields, p.primary_then) for p in check.compared} == {
        ("C-NOVAK", "jiri.novak@client.test", ("From",), True),
        ("C-NOVAKOVA", "jana.novakova@client.test", ("Cc",), True),
    }
    assert check.outcome.startswith("Logged")
    # Found by sender and by Message-ID too; rendered for support.
    assert _check(box, "jiri.novak@").uid == check.uid
    assert _check(box, "offer-1@client").uid == check.uid
    _, client = signed_in(world, "support")
    page = text(client.get(f"/support/mailboxes/{box.id}/why?q=nabídka", headers={"HX-Request": "true"}))
    assert page.lstrip().startswith('<div id="why-result"') and "Jiří Novák" in page
    assert "Matched customer C-NOVAK by primary address" in page and "stored once as email #" in page


def test_why_an_email_with_a_colleagues_address_fails_the_internal_rule_naming_it(mail, team):
    _, box, colleague = team
    me = box.address
    mail.put(me, from_=colleague, to=me, cc="dvorak@client.test", subject="Internal with a customer in copy")
    mail.sync(box)

    check = _check(box, "internal with")
    verdicts = {v.rule: v for v in check.verdicts}
    assert not verdicts["internal"].passed and colleague in verdicts["internal"].explanation
    assert verdicts["customer"].passed  # the customer matched, yet the colleague rule wins
    assert not check.would_log and not check.stored and check.progress.passed
    assert check.outcome.startswith("Not logged:") and colleague in check.outcome


def test_why_a_draft_fails_the_folder_and_draft_rules(mail, team):
    _, box, _ = team
    me = box.address
    mail.put(me, "Drafts", from_=me, to="dvorak@client.test", subject="Unfinished offer", flags=["\\Draft"])
    mail.sync(box)

    check = _check(box, "unfinished")
    assert check.folder == "Drafts" and check.special_use == "\\Drafts"
    assert _verdicts(check) == {"window": True, "folder": False, "draft": False, "internal": True, "customer": True}
    assert not check.progress.passed and "never synced" in check.progress.explanation
    assert not check.stored


def test_why_an_email_from_a_customers_old_address_after_the_change_is_not_logged(mail, team):
    _, box, _ = team
    me = box.address
    mail.put(me, from_="old@client.test", to=me, subject="Still writing from my old address", days_ago=1)
    mail.put(me, from_="old@client.test", to=me, subject="Written before the change", days_ago=5)
    mail.sync(box)

    check = _check(box, "still writing")
    customer = next(v for v in check.verdicts if v.rule == "customer")
    assert not customer.passed and "old@client.test" in customer.explanation and "only until" in customer.explanation
    [entry] = check.compared
    assert (entry.external_id, entry.since, entry.primary_then) == ("C-MOVED", None, False)
    assert entry.until is not None and not check.stored

    before = _check(box, "before the change")  # the old address still matched then; it stays logged
    assert before.would_log and before.stored and [s.external_id for s in before.stored_on] == ["C-MOVED"]


def test_why_tells_the_window_and_an_email_the_sync_has_not_reached(mail, team):
    _, box, _ = team
    me = box.address
    mail.put(me, from_="dvorak@client.test", to=me, subject="Too old", days_ago=45)
    mail.sync(box, "backfill")
    mail.put(me, from_="dvorak@client.test", to=me, subject="Arrived after the sync", days_ago=0)

    old = _check(box, "too old")
    assert _verdicts(old)["window"] is False and "before the back-fill window" in old.verdicts[0].explanation
    fresh = _check(box, "arrived after")
    assert fresh.would_log and not fresh.stored and not fresh.progress.passed
    assert "next sync" in fresh.outcome
    assert [w.external_id for w in fresh.would_log_on] == ["C-DVORAK"]


def test_the_why_check_stores_nothing_and_marks_nothing_read(mail, team, world):
    _, box, colleague = team
    me = box.address
    mail.put(me, from_="dvorak@client.test", to=me, subject="Logged one")
    mail.sync(box)
    mail.put(me, from_=colleague, to=me, subject="Ignored one")
    mail.put(me, from_="dvorak@client.test", to=me, subject="Not yet synced one")
    before = row_counts()
    _, client = signed_in(world, "support")
    for query in ("", "one", "logged", "ignored", "not yet"):
        assert client.get(f"/support/mailboxes/{box.id}/why?q={query}").status_code == 200
    assert len(diagnose.why(db.session.get(Mailbox, box.id), "one").checks) == 3
    after = row_counts()
    # Each use is audited (who, which mailbox, what was searched: the security review); else nothing.
    assert after.pop("AuditEvent") == before.pop("AuditEvent") + 5 and after == before
    with mail.dovecot.client(me) as imap:  # read-only and BODY.PEEK: still unread on the server
        imap.select_folder("INBOX", readonly=True)
        assert imap.search(["UNSEEN"]) and len(imap.search(["SEEN"])) == 0


def test_why_an_imap_failure_is_shown_classified_never_a_500(mail, world):
    _, box = mail.rep_with_mailbox("petra")
    mail.dovecot.set_password(box.address, "changed")
    _, client = signed_in(world, "support")
    r = client.get(f"/support/mailboxes/{box.id}/why?q=anything")
    assert r.status_code == 200
    body = text(r)
    assert "The mailbox could not be read" in body and "auth_failed" in body
    assert "AUTHENTICATIONFAILED" in body and "imap-pass-1" not in body
    result = diagnose.why(db.session.get(Mailbox, box.id), "x")
    assert result.error.reason == "auth_failed"
    linking.disconnect(db.session.get(Mailbox, box.id), None)
    db.session.commit()
    assert "disconnected" in text(client.get(f"/support/mailboxes/{box.id}/why?q=x"))


def test_why_goes_on_when_the_server_refuses_one_folder(mail, team):
    _, box, _ = team
    mail.dovecot.create_folder(box.address, "Projects")
    mail.put(box.address, from_="dvorak@client.test", to=box.address, subject="Still found")

    def connect(mailbox):  # the folder disappears between LIST and STATUS, as when a rep deletes it
        session = sessions.open_imap(mailbox)
        listed = session.list_folders

        def list_then_delete():
            folders = listed()
            mail.dovecot.delete_folder(box.address, "Projects")
            return folders

        session.list_folders = list_then_delete
        return session

    result = diagnose.why(db.session.get(Mailbox, box.id), "still found", connect=connect)
    assert result.error is None and [c.subject for c in result.checks] == ["Still found"]
    assert [name for name, _ in result.folder_errors] == ["Projects"]
    assert "NONEXISTENT" in result.folder_errors[0][1] or "exist" in result.folder_errors[0][1]


def test_why_without_a_match_says_what_was_searched(mail, team):
    _, box, _ = team
    mail.put(box.address, from_="dvorak@client.test", to=box.address, subject="Hello")
    result = diagnose.why(db.session.get(Mailbox, box.id), "no such subject" * 30)
    assert result.checks == [] and result.scanned == 1 and "INBOX" in result.folders
    assert len(result.query) == diagnose.MAX_QUERY


# -- IT ------------------------------------------------------------------------------------------
def test_connected_accounts_show_scopes_against_those_required_and_token_health(world):
    owner = world.user("petra@crm.test", "rep", name="Petra")
    admin = world.user("boss@crm.test", "admin")
    now = utcnow()
    make_mailbox(owner, "petra@contoso.test", provider="microsoft",
                 scopes_granted=["https://outlook.office.com/IMAP.AccessAsUser.All", "openid", "email", "profile",
                                 "offline_access"],
                 token_refreshed_at=now - timedelta(minutes=5), token_expires_at=now + timedelta(minutes=55),
                 secret_encrypted=crypto.encrypt('{"refresh_token": "rt-secret-123"}'))
    make_mailbox(owner, "petra@gmail.test", provider="google",
                 scopes_granted=["https://mail.google.com/", "openid",
                                 "https://www.googleapis.com/auth/userinfo.email",
                                 "https://www.googleapis.com/auth/userinfo.profile"],
                 token_refresh_failures=3, token_expires_at=now - timedelta(hours=2), connected_by_id=admin.id)
    make_mailbox(owner, "petra@agency.test", secret_encrypted=crypto.encrypt("imap-password-secret"))
    _, client = signed_in(world, "it")

    page = text(client.get("/it/accounts"))
    assert '<span class="scope scope-missing" title="missing">SMTP.Send</span>' in page
    assert "Missing: SMTP.Send" in page
    assert page.count("scope-missing") == 1  # Google's long names count as email and profile
    assert "password (no OAuth scopes)" in page
    assert "3 failed refreshes in a row" in page and "by boss@crm.test" in page
    assert "rt-secret-123" not in page and "imap-password-secret" not in page

    r = client.get("/it/accounts.csv")
    assert r.status_code == 200 and r.mimetype == "text/csv" and "attachment" in r.headers["Content-Disposition"]
    body = text(r)
    assert "rt-secret-123" not in body and "imap-password-secret" not in body and "gAAAA" not in body
    rows = {row["address"]: row for row in csv.DictReader(io.StringIO(body))}
    assert set(rows) == {"petra@contoso.test", "petra@gmail.test", "petra@agency.test"}
    assert rows["petra@contoso.test"]["scopes_missing"] == "SMTP.Send"
    assert rows["petra@agency.test"]["scopes_granted"] == "password (no OAuth scopes)"
    assert rows["petra@gmail.test"]["connected_by"] == "boss@crm.test"
    assert rows["petra@gmail.test"]["token_refresh_failures"] == "3"


def test_csv_cells_are_never_spreadsheet_formulas(world):
    owner = world.user("petra@crm.test", "rep", name="=HYPERLINK(\"http://evil.test\")")
    make_mailbox(owner, "petra@agency.test")
    _, client = signed_in(world, "it")
    row = next(csv.DictReader(io.StringIO(text(client.get("/it/accounts.csv")))))
    assert row["owner_name"].startswith("'=")


def test_audit_log_lists_who_did_what_filters_by_action_and_pages(world):
    admin, client = signed_in(world, "admin")
    box = make_mailbox(world.user("petra@crm.test"), "petra@agency.test")
    from portal.models.audit import record

    for _ in range(60):
        record("resync_asked", admin, box, before={"state": "problematic", "reason": "auth_failed"})
    record("settings_changed", admin, None, before={"backfill_days": 30}, after={"backfill_days": 14})
    record("mailbox_connected", None, box, address=box.address, password="must-not-show")
    db.session.commit()

    page = text(client.get("/it/audit"))
    assert "1–50 of 62" in page and "settings changed" in page and "30 → 14" in page
    assert "must-not-show" not in page
    filtered = text(client.get("/it/audit?action=settings_changed"))
    assert "1 shown" in filtered and "resync asked</span>" not in filtered
    assert "51–62 of 62" in text(client.get("/it/audit?page=2"))
    assert client.get("/it/audit?action=<script>&page=x").status_code == 200


# -- admin: users --------------------------------------------------------------------------------
def test_admin_changes_role_and_permissions_with_an_audit_event(world):
    admin, client = signed_in(world, "admin")
    petra = world.user("petra@crm.test", "rep")
    token = csrf(client)
    r = client.post(f"/admin/users/{petra.id}", data={"csrf_token": token, "role": "support",
                                                       "can_see_activities": "y"})
    assert r.status_code == 302
    petra = db.session.get(User, petra.id)
    assert (petra.role, petra.can_see_activities, petra.can_see_emails) == ("support", True, False)
    event_ = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "user_changed"))
    assert event_.actor_id == admin.id and event_.target_id == str(petra.id)
    assert event_.detail["before"] == {"role": "rep", "can_see_activities": True, "can_see_emails": True}
    assert event_.detail["after"] == {"role": "support", "can_see_activities": True, "can_see_emails": False}
    assert "role: rep → support" in text(client.get("/admin/users"))

    assert client.post(f"/admin/users/{petra.id}", data={"csrf_token": token, "role": "king"}).status_code == 400
    assert db.session.get(User, petra.id).role == "support"
    # The only admin cannot take the role away from themselves.
    r = client.post(f"/admin/users/{admin.id}", data={"csrf_token": token, "role": "rep"})
    assert r.status_code == 400 and "only administrator" in text(r)
    assert client.post("/admin/users/99999", data={"csrf_token": token, "role": "rep"}).status_code == 404


# -- admin: resync -------------------------------------------------------------------------------
def test_resync_of_all_problematic_shows_the_count_and_runs_only_when_confirmed(world):
    admin, client = signed_in(world, "admin")
    petra = world.user("petra@crm.test")
    broken = [make_mailbox(petra, f"p{i}@agency.test", "problematic", "auth_failed", last_success_at=utcnow())
              for i in range(2)]
    no_imap = make_mailbox(petra, "imap@agency.test", "problematic", "imap_disabled")
    fine = make_mailbox(petra, "fine@agency.test", "active")

    assert "3 Problematic mailboxes" in text(client.get("/admin/mailboxes"))
    confirm = text(client.get("/admin/resync?scope=problematic"))
    assert "Resync 3 mailboxes?" in confirm and 'name="expected" value="3"' in confirm
    assert "Resync 2 mailboxes?" in text(client.get("/admin/resync?scope=problematic&reason=auth_failed"))

    token = csrf(client)
    unconfirmed = client.post("/admin/resync", data={"csrf_token": token, "scope": "problematic"})
    assert unconfirmed.status_code == 400
    assert db.session.scalar(select(func.count()).where(Mailbox.state == "problematic")) == 3

    r = client.post("/admin/resync", data={"csrf_token": token, "scope": "problematic", "confirmed": "yes",
                                           "expected": "3"})
    assert r.status_code == 302
    assert "Resync asked for 3 mailboxes." in text(client.get(r.headers["Location"]))
    states = {m.address: m.state for m in db.session.scalars(select(Mailbox))}
    assert states == {"p0@agency.test": "active", "p1@agency.test": "active",
                      "imap@agency.test": "pending",  # never synced: back to pending, as on reconnect
                      "fine@agency.test": "active"}
    assert get_queue("sync").count == 3 and job_state(sync_job_id(fine.id)) is None
    changes = db.session.scalars(select(MailboxStateChange).where(MailboxStateChange.actor_id == admin.id)).all()
    assert sorted(c.mailbox_id for c in changes) == sorted([broken[0].id, broken[1].id, no_imap.id])
    audits = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "resync_asked")).all()
    assert len(audits) == 3 and all(a.detail["before"]["state"] == "problematic" for a in audits)


def test_resync_of_a_selection_skips_disconnected_ones(world):
    _, client = signed_in(world, "admin")
    petra = world.user("petra@crm.test")
    a = make_mailbox(petra, "a@agency.test", "problematic", "token_revoked")
    b = make_mailbox(petra, "b@agency.test", "active")
    gone = make_mailbox(petra, "gone@agency.test", "disconnected")
    confirm = text(client.get(f"/admin/resync?scope=selected&mailbox={a.id}&mailbox={b.id}&mailbox={gone.id}"))
    assert "Resync 2 mailboxes?" in confirm and "1 disconnected mailbox is skipped" in confirm
    token = csrf(client)
    r = client.post("/admin/resync", data={"csrf_token": token, "scope": "selected", "confirmed": "yes",
                                           "mailbox": [str(a.id), str(b.id), str(gone.id)]})
    assert r.status_code == 302
    assert "Resync asked for 2 mailboxes (1 disconnected, skipped)." in text(client.get(r.headers["Location"]))
    assert db.session.get(Mailbox, gone.id).state == "disconnected"
    assert get_queue("sync").count == 2
    # Bad selections are refused, not a 500.
    for bad in ("mailbox=abc", "mailbox=", "", "mailbox=1" + "0" * 30, "mailbox=²", "mailbox=0"):
        assert client.get(f"/admin/resync?scope=selected&{bad}").status_code == 400


# -- admin: settings ------------------------------------------------------------------------------
def test_settings_are_validated_and_audited(world):
    admin, client = signed_in(world, "admin")
    token = csrf(client)
    good = {"backfill_days": "14", "interval_min_minutes": "5", "interval_max_minutes": "20",
            "problematic_after_failures": "3"}
    for field, value, message in (
        ("interval_max_minutes", "4", "must not be shorter than the shortest"),
        ("backfill_days", "400", "from 0 to 365"),
        ("problematic_after_failures", "0", "from 1 to 1000"),
        ("interval_min_minutes", "ten", "Not a valid integer"),
        ("backfill_days", "", "Enter a whole number"),
    ):
        r = client.post("/admin/settings", data={**good, field: value, "csrf_token": token})
        assert r.status_code == 400 and message in text(r), (field, value)
        assert db.session.scalar(select(func.count()).select_from(Setting)) == 0
    r = client.post("/admin/settings", data={**good, "csrf_token": token})
    assert r.status_code == 302
    from portal import runtime_settings

    assert [runtime_settings.get(k) for k in good] == [14, 5, 20, 3]
    event_ = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "settings_changed"))
    assert event_.actor_id == admin.id
    assert event_.detail == {"before": {"backfill_days": 30, "interval_min_minutes": 10, "interval_max_minutes": 30,
                                        "problematic_after_failures": 5},
                             "after": {"backfill_days": 14, "interval_min_minutes": 5, "interval_max_minutes": 20,
                                       "problematic_after_failures": 3}}
    page = text(client.get("/admin/settings"))
    assert 'value="14"' in page and "default 30" in page


# -- admin: health --------------------------------------------------------------------------------
def _failing_job():
    raise RuntimeError("the database went away")


def test_health_shows_queues_workers_failed_jobs_stuck_runs_and_lateness(world, app):
    _, client = signed_in(world, "admin")
    petra = world.user("petra@crm.test")
    late = make_mailbox(petra, "late@agency.test", "active", next_sync_at=utcnow() - timedelta(minutes=40))
    make_mailbox(petra, "ok@agency.test", "active", next_sync_at=utcnow() + timedelta(minutes=10))
    make_mailbox(petra, "bad@agency.test", "problematic", "auth_failed")
    stale = app.config["EIS_RUN_STALE_SECONDS"]
    stuck = SyncRun(mailbox_id=late.id, trigger="scheduled", status="running", phase="back-filling INBOX",
                    started_at=utcnow() - timedelta(seconds=stale * 3),
                    heartbeat_at=utcnow() - timedelta(seconds=stale * 2))
    db.session.add(stuck)
    db.session.commit()
    redis = get_redis()
    get_queue("default").enqueue("tests.test_pages_ops._failing_job", job_id="doomed-1", failure_ttl=600)
    SimpleWorker([get_queue("default")], connection=redis).work(burst=True)
    enqueue_sync(late.id, "manual")
    worker = Worker([get_queue(q) for q in ("send", "sync", "default")], connection=redis, name="eis-test-worker")
    worker.register_birth()
    try:
        body = text(client.get("/admin/health"))
    finally:
        worker.register_death()

    assert re.search(r'data-queue="sync"><td>sync</td><td class="num">1</td>', body)
    assert re.search(r'data-metric="workers"><span class="metric-n">1</span>', body) and "eis-test-worker" in body
    assert "doomed-1" in body and "RuntimeError: the database went away" in body
    assert "tests.test_pages_ops._failing_job" in body
    assert re.search(r'data-metric="stuck"><span class="metric-n">1</span>', body) and "back-filling INBOX" in body
    assert re.search(r'data-metric="late">\s*<span class="metric-n">40 min</span>', body)
    assert re.search(r'data-state="problematic">.*?<td class="num">1</td>', body)
    assert "Syncing needs attention" in body
    fragment = text(client.get("/admin/health", headers={"HX-Request": "true"}))
    assert fragment.lstrip().startswith('<section id="health"') and 'hx-trigger="every 10s"' in fragment


def test_health_without_redis_says_so_instead_of_failing(world, app):
    _, client = signed_in(world, "admin")
    from redis import Redis

    app.extensions["eis_redis"] = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    body = text(client.get("/admin/health"))
    assert "Redis could not be reached" in body and "Cannot tell" in body


def test_nav_shows_each_ops_area_to_its_roles(world):
    expected = {"rep": set(), "support": {"Mailboxes"}, "it": {"Connected accounts"},
                "admin": {"Mailboxes", "Connected accounts", "Admin"}}
    for role, areas in expected.items():
        _, client = signed_in(world, role)
        nav = text(client.get("/")).split('<nav aria-label="Main">')[1].split("</nav>")[0]
        assert {a for a in ("Mailboxes", "Connected accounts", "Admin") if f">{a}</a>" in nav} == areas, role
