"""Syncing over real IMAP (Dovecot), by a real RQ worker: every rule end to end."""
from datetime import datetime, timedelta

import pytest

from portal.extensions import db
from portal.models import Email, FolderCheckpoint, Mailbox, MailboxStateChange
from portal.timeutil import utcnow


@pytest.fixture
def team(mail, world):
    """A rep with a mailbox, a colleague whose mailbox is connected, customers and a deal."""
    rep, box = mail.rep_with_mailbox("petra")
    world.customer("C-NOVAK", "jiri.novak@client.test", name="Jiří Novák",
                   additional=["jiri.private@client.test"])
    world.customer("C-NOVAKOVA", "jana.novakova@client.test", name="Jana Nováková")
    world.customer("C-DVORAK", "dvorak@client.test", name="Karel Dvořák")
    world.deal("D-FLAT", "C-NOVAK", "C-NOVAKOVA")
    colleague_address = mail.imap_user("tomas")
    colleague = world.user(f"tomas-{mail.tag}@crm.test", "rep")
    mail.link(colleague, colleague_address)
    return rep, box, colleague_address


def test_first_sync_logs_exactly_what_the_rules_say(mail, team):
    rep, box, colleague = team
    me = box.address
    put = mail.put
    put(me, from_="Jiří Novák <jiri.novak@client.test>", to=me, subject="Nabídka bytu 3+kk")
    put(me, "Sent", from_=me, to="jiri.novak@client.test", subject="Re: Nabídka bytu 3+kk")
    put(me, from_="jiri.novak@client.test", to=me, cc="jana.novakova@client.test", subject="Prohlídka v sobotu")
    put(me, from_="jiri.private@client.test", to=me, subject="From an additional contact")
    put(me, from_="JIRI.NOVAK@CLIENT.TEST", to=me, subject="Upper-case sender")
    put(me, from_=colleague, to=me, cc="dvorak@client.test", subject="Internal with customer in copy")
    put(me, "Drafts", from_=me, to="dvorak@client.test", subject="A draft in Drafts", flags=["\\Draft"])
    put(me, from_=me, to="dvorak@client.test", subject="Draft flag in INBOX", flags=["\\Draft"])
    put(me, "Junk", from_="dvorak@client.test", to=me, subject="Junk")
    put(me, "Trash", from_="dvorak@client.test", to=me, subject="Trash")
    put(me, from_="dvorak@client.test", to=me, subject="Too old", days_ago=45)
    put(me, from_="dvorak@client.test", to=me, subject="Inside the window", days_ago=29)
    put(me, from_="stranger@elsewhere.test", to=me, subject="Not a customer")

    run = mail.sync(box, "backfill")

    assert run.status == "succeeded", run.error_detail
    assert mail.activities() == {
        ("C-NOVAK", "Nabídka bytu 3+kk"),
        ("C-NOVAK", "Re: Nabídka bytu 3+kk"),
        ("C-NOVAK", "Prohlídka v sobotu"),
        ("C-NOVAKOVA", "Prohlídka v sobotu"),
        ("C-NOVAK", "Upper-case sender"),
        ("C-DVORAK", "Inside the window"),
    }
    assert len(mail.activity_rows()) == 6  # nothing twice
    # The 45-day-old message is not even fetched: the window's SEARCH SINCE leaves it out;
    # Drafts, Junk and Trash are never opened.
    assert (run.seen, run.logged) == (9, 5)
    assert run.ignored == {"no_customer": 2, "internal": 1, "draft_flag": 1}
    box = db.session.get(Mailbox, box.id)
    assert box.state == "active" and box.last_success_at is not None and box.next_sync_at > utcnow()


def test_additional_customer_in_copy_is_logged_with_the_deal(mail, team):
    _, box, _ = team
    mail.put(box.address, from_="jiri.novak@client.test", to=box.address, cc="jana.novakova@client.test",
             subject="Smlouva")
    mail.sync(box)
    from portal.models import Activity, Customer

    rows = {(a.customer.external_id, a.deal.external_id if a.deal else None, a.direction, a.matched_field)
            for a in db.session.query(Activity).join(Customer)}
    # Jiří wrote to the rep: incoming on Jana's Activities too, though she is only in copy.
    assert rows == {("C-NOVAK", None, "in", "from"), ("C-NOVAKOVA", "D-FLAT", "in", "cc")}


def _directions(world, user, *customers) -> dict[tuple[str, str], str]:
    """(customer, subject) -> direction, in the database and in the API (they must agree)."""
    from portal.models import Activity, Customer

    stored = {(a.customer.external_id, a.email.subject): a.direction
              for a in db.session.query(Activity).join(Customer) if a.customer.external_id in customers}
    api = world.api(user)
    answered = {}
    for customer in customers:
        r = api.get(f"/customers/{customer}/activities")
        assert r.status_code == 200, r.json
        answered.update({(customer, a["subject"]): a["direction"] for a in r.json["activities"]})
    assert answered == stored
    return stored


def test_direction_is_the_emails_the_same_for_every_customer_on_it(mail, team, world):
    rep, box, _ = team
    me = box.address
    mail.put(me, from_="Jiří Novák <jiri.novak@client.test>", to=me, cc="jana.novakova@client.test",
             subject="Dotaz k bytu")
    mail.put(me, "Sent", from_=me, to="jiri.novak@client.test", cc="jana.novakova@client.test",
             subject="Re: Dotaz k bytu")
    mail.put(me, from_="stranger@elsewhere.test", to=me, cc="dvorak@client.test", subject="Doporučení")
    run = mail.sync(box)
    assert run.status == "succeeded", run.error_detail
    assert _directions(world, rep, "C-NOVAK", "C-NOVAKOVA", "C-DVORAK") == {
        ("C-NOVAK", "Dotaz k bytu"): "in",
        ("C-NOVAKOVA", "Dotaz k bytu"): "in",
        ("C-NOVAK", "Re: Dotaz k bytu"): "out",
        ("C-NOVAKOVA", "Re: Dotaz k bytu"): "out",
        ("C-DVORAK", "Doporučení"): "in",
    }


def test_sent_folder_makes_it_outgoing_even_from_an_alias(mail, team, world):
    rep, box, _ = team
    me = box.address
    # From an alias that is no mailbox, filed in Sent: the mailbox sent it.
    mail.put(me, "Sent", from_="prodej@agency.test", to="jiri.novak@client.test",
             cc="jana.novakova@client.test", subject="Z aliasu")
    # The same message in INBOX (a copy to the alias) and in Sent: "out" whichever comes first.
    copy = dict(from_="prodej@agency.test", to="dvorak@client.test", cc="prodej@agency.test",
                subject="Kopie sobě", message_id="<copy-1@agency.test>")
    mail.put(me, **copy)
    mail.sync(box)
    assert _directions(world, rep, "C-DVORAK") == {("C-DVORAK", "Kopie sobě"): "in"}
    mail.put(me, "Sent", **copy)
    run = mail.sync(box)
    assert run.status == "succeeded", run.error_detail
    assert mail.email_count() == 2
    assert _directions(world, rep, "C-NOVAK", "C-NOVAKOVA", "C-DVORAK") == {
        ("C-NOVAK", "Z aliasu"): "out",
        ("C-NOVAKOVA", "Z aliasu"): "out",
        ("C-DVORAK", "Kopie sobě"): "out",
    }


def test_email_with_a_disconnected_colleague_is_still_internal(mail, team, world):
    _, box, colleague = team
    from portal.accounts import linking as service

    other = db.session.query(Mailbox).filter_by(address=colleague).one()
    service.disconnect(other, other.owner)
    db.session.commit()
    mail.put(box.address, from_=colleague, to="dvorak@client.test", cc=box.address, subject="Colleague wrote")
    run = mail.sync(box)
    assert mail.activities() == set() and run.ignored == {"internal": 1}


def test_new_mail_is_logged_on_the_next_sync_and_a_quiet_poll_costs_little(mail, team):
    _, box, _ = team
    mail.put(box.address, from_="dvorak@client.test", to=box.address, subject="First")
    mail.sync(box)
    quiet = mail.sync(box)
    assert quiet.status == "succeeded" and quiet.seen == 0
    # LOGIN (its answer carries the capabilities), LIST, one STATUS per folder (INBOX,
    # Sent); then LOGOUT. Nothing that grows with the mailbox.
    assert quiet.imap_commands == 4, quiet.imap_commands
    mail.put(box.address, from_="dvorak@client.test", to=box.address, subject="Second")
    run = mail.sync(box)
    assert run.seen == 1 and run.logged == 1
    assert mail.activities() == {("C-DVORAK", "First"), ("C-DVORAK", "Second")}


def test_deleted_mail_stays_logged(mail, team, dovecot):
    _, box, _ = team
    uid = mail.put(box.address, from_="dvorak@client.test", to=box.address, subject="Will be deleted")
    mail.sync(box)
    dovecot.expunge(box.address, "INBOX", [uid])
    mail.put(box.address, from_="dvorak@client.test", to=box.address, subject="After the delete")
    run = mail.sync(box)
    assert run.status == "succeeded"
    assert mail.activities() == {("C-DVORAK", "Will be deleted"), ("C-DVORAK", "After the delete")}


def test_primary_address_history_decides_by_date(mail, team, world):
    _, box, _ = team
    changed = utcnow() - timedelta(days=5)
    world.customer("C-DVORAK", "karel.new@client.test", name="Karel Dvořák", since=changed)
    me = box.address
    mail.put(me, from_="dvorak@client.test", to=me, subject="Old address before the change", days_ago=8)
    mail.put(me, from_="dvorak@client.test", to=me, subject="Old address after the change", days_ago=2)
    mail.put(me, from_="karel.new@client.test", to=me, subject="New address before the change", days_ago=8)
    mail.put(me, from_="karel.new@client.test", to=me, subject="New address after the change", days_ago=2)
    mail.sync(box)
    assert mail.activities() == {("C-DVORAK", "Old address before the change"),
                                 ("C-DVORAK", "New address after the change")}


def test_same_message_in_two_folders_and_two_mailboxes_is_stored_once(mail, team, world, dovecot):
    rep, box, colleague_address = team
    dovecot.create_folder(box.address, "Clients")
    other_address = mail.imap_user("second")
    second = mail.link(rep, other_address)  # one user, two mailboxes (seed FAQ)
    # Sent to a team alias: naming either mailbox would make it internal for the other.
    message = dict(from_="dvorak@client.test", to="sales-team@agency.test", subject="To both",
                   message_id="<same-123@client.test>")
    mail.put(box.address, **message)
    mail.put(box.address, "Clients", **message)
    mail.put(other_address, **message)
    mail.sync(box)
    mail.sync(second)
    assert mail.email_count() == 1 and mail.source_count() == 3
    assert mail.activity_rows() == [("C-DVORAK", "To both")]


def test_message_without_message_id_is_deduplicated_by_content(mail, team):
    _, box, _ = team
    message = dict(from_="dvorak@client.test", to=box.address, subject="No id", message_id=False,
                   date=datetime(2026, 11, 20, 10, 0))
    mail.put(box.address, **message)
    mail.put(box.address, "Sent", **message)
    mail.sync(box)
    assert mail.email_count() == 1 and mail.source_count() == 2
    assert db.session.query(Email).one().dedupe_key.startswith("sha256:")


def test_uidvalidity_change_rereads_the_window_without_duplicates(mail, team, dovecot):
    _, box, _ = team
    mail.put(box.address, from_="dvorak@client.test", to=box.address, subject="Before the change")
    mail.sync(box)
    before = dovecot.folder_status(box.address, "INBOX")["UIDVALIDITY"]
    dovecot.set_uidvalidity(box.address, "INBOX", before + 1000)
    mail.put(box.address, from_="dvorak@client.test", to=box.address, subject="After the change")
    run = mail.sync(box)
    assert run.status == "succeeded"
    assert mail.activity_rows() == [("C-DVORAK", "After the change"), ("C-DVORAK", "Before the change")]
    assert run.duplicates == 1 and run.logged == 1
    cp = db.session.query(FolderCheckpoint).filter_by(mailbox_id=box.id, name="INBOX").one()
    assert cp.uidvalidity == dovecot.folder_status(box.address, "INBOX")["UIDVALIDITY"]


def test_password_changed_on_the_server_makes_the_mailbox_problematic(mail, team, dovecot):
    _, box, _ = team
    mail.sync(box)
    dovecot.set_password(box.address, "changed-by-it")
    run = mail.sync(box)
    box = db.session.get(Mailbox, box.id)
    assert run.status == "failed" and run.error_class == "auth_failed"
    assert "AUTHENTICATIONFAILED" in run.error_detail  # the provider's own words
    assert (box.state, box.reason, box.next_sync_at) == ("problematic", "auth_failed", None)
    assert db.session.query(MailboxStateChange).filter_by(mailbox_id=box.id, to_state="problematic").count() == 1
    # Never synced again until reconnected: neither the scheduler nor a direct run touch it.
    from portal.jobs.schedule import enqueue_due
    from portal.queue import job_state, sync_job_id
    from portal.sync import run_sync

    enqueue_due()
    assert job_state(sync_job_id(box.id)) is None
    assert run_sync(box.id, trigger="manual") is None
    assert box.runs.count() == 2


def test_reconnect_with_the_new_password_keeps_checkpoints_no_gap_no_duplicate(mail, team, dovecot):
    rep, box, _ = team
    mail.put(box.address, from_="dvorak@client.test", to=box.address, subject="Before")
    mail.sync(box)
    dovecot.set_password(box.address, "changed-by-it")
    mail.sync(box)
    mail.put(box.address, from_="dvorak@client.test", to=box.address, subject="While problematic")
    again = mail.link(rep, box.address, "changed-by-it")
    assert again.id == box.id and again.state == "active"
    run = mail.sync(again)
    assert run.status == "succeeded" and run.seen == 1
    assert mail.activity_rows() == [("C-DVORAK", "Before"), ("C-DVORAK", "While problematic")]


def test_delete_and_connect_again_backfills_without_duplicates(mail, team):
    rep, box, _ = team
    from portal.accounts import linking as service

    mail.put(box.address, from_="dvorak@client.test", to=box.address, subject="Kept")
    mail.sync(box)
    service.disconnect(box, rep)
    db.session.commit()
    assert mail.activity_rows() == [("C-DVORAK", "Kept")]  # logged email stays
    new = mail.link(rep, box.address)
    assert new.id != box.id
    run = mail.sync(new, "backfill")
    assert run.status == "succeeded" and run.duplicates == 1 and run.logged == 0
    assert mail.activity_rows() == [("C-DVORAK", "Kept")]


def test_server_stopped_is_transient_not_problematic(mail, team, dovecot):
    _, box, _ = team
    mail.sync(box)
    dovecot.stop()
    try:
        run = mail.sync(box)
    finally:
        dovecot.start()
    box = db.session.get(Mailbox, box.id)
    assert run.status == "failed" and run.error_class == "server_unreachable"
    assert box.state == "active" and box.consecutive_failures == 1 and box.next_sync_at > utcnow()
    mail.put(box.address, from_="dvorak@client.test", to=box.address, subject="After the outage")
    run = mail.sync(box)
    box = db.session.get(Mailbox, box.id)
    assert run.status == "succeeded" and box.consecutive_failures == 0 and box.reason is None


def test_transient_faults_turn_problematic_past_the_threshold(mail, team, dovecot, app):
    _, box, _ = team
    app.config["EIS_PROBLEMATIC_AFTER_FAILURES"] = 2
    dovecot.stop()
    try:
        mail.sync(box)
        box = db.session.get(Mailbox, box.id)
        assert box.state == "pending"
        mail.sync(box)
    finally:
        dovecot.start()
    box = db.session.get(Mailbox, box.id)
    assert (box.state, box.reason) == ("problematic", "server_unreachable")


def test_tls_connection_verifies_the_server_certificate(mail, world):
    address = mail.imap_user("tls")
    rep = world.user(f"tls-{mail.tag}@crm.test")
    box = mail.link(rep, address, security="ssl")
    assert mail.sync(box).status == "succeeded"
