"""The migrations on a database that holds data: 0002 renames the raw message column and
keeps the first release's gzip rows readable; its downgrade leaves only gzip behind. 0003
gives every activity the direction of its email as seen from its mailbox; its downgrade
gives back the old per-customer rule."""
import gzip
import uuid
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from tests.conftest import BACKENDS, PG_ADMIN_URL, _config

RAW = "From: Jiří Novák <jiri@klient.test>\r\nSubject: Nabídka\r\n\r\nDobrý den\r\n".encode()


@contextmanager
def _empty_database(backend: str, tmp_path):
    if backend == "sqlite":
        yield "sqlite:///" + str(tmp_path / "migrations.sqlite3")
        return
    name = f"eis_migrations_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _raw_column(conn) -> dict[str, bytes]:
    columns = {c["name"] for c in sa.inspect(conn).get_columns("emails")}
    column = "raw_packed" if "raw_packed" in columns else "raw_gz"
    return {key: value for key, value in conn.execute(sa.text(f"SELECT dedupe_key, {column} FROM emails"))}


@pytest.mark.parametrize("backend", BACKENDS)
def test_raw_messages_survive_the_zstandard_migration_both_ways(backend, tmp_path):
    from flask_migrate import downgrade, upgrade

    from portal import create_app
    from portal.extensions import db
    from portal.mail import rawstore

    with _empty_database(backend, tmp_path) as url:
        app = create_app(_config(url, "redis://unused", tmp_path / "instance"))
        with app.app_context():
            upgrade(revision="0001")
            insert = sa.text("INSERT INTO emails (dedupe_key, subject, to_addrs, cc_addrs, attachments, size, "
                             "created_at, {col}) VALUES (:key, '', '[]', '[]', '[]', :size, CURRENT_TIMESTAMP, :raw)")
            with db.engine.begin() as conn:
                conn.execute(sa.text(insert.text.format(col="raw_gz")),
                             {"key": "<old@klient.test>", "size": len(RAW), "raw": gzip.compress(RAW)})
            upgrade()
            with db.engine.begin() as conn:
                conn.execute(sa.text(insert.text.format(col="raw_packed")),
                             {"key": "<new@klient.test>", "size": len(RAW), "raw": rawstore.pack(RAW)})
                stored = _raw_column(conn)
            assert set(stored) == {"<old@klient.test>", "<new@klient.test>"}
            assert stored["<new@klient.test>"][:4] == b"\x28\xb5\x2f\xfd"  # Zstandard
            assert all(rawstore.unpack(value) == RAW for value in stored.values())

            downgrade(revision="0001")
            with db.engine.connect() as conn:
                stored = _raw_column(conn)
            assert [gzip.decompress(value) for value in stored.values()] == [RAW, RAW]  # what 0001's code reads

            upgrade()  # and up again
            with db.engine.connect() as conn:
                assert all(rawstore.unpack(value) == RAW for value in _raw_column(conn).values())
            db.engine.dispose()


def test_unpack_refuses_what_it_cannot_read():
    from portal.mail import rawstore

    with pytest.raises(rawstore.UnreadableRaw, match="unknown format"):
        rawstore.unpack(b"plain bytes")
    with pytest.raises(rawstore.UnreadableRaw, match="damaged"):
        rawstore.unpack(rawstore.pack(RAW * 50)[:30])
    with pytest.raises(rawstore.UnreadableRaw, match="damaged"):
        rawstore.unpack(gzip.compress(RAW)[:15])


# -- 0003: activities.direction is the email's, seen from the synced mailbox -------------------
PETRA_BOX, PETRA_OLD_BOX, TOMAS_BOX = 1, 2, 3
JIRI, JANA, DVORAK = 1, 2, 3
# email id, From, [(folder, mailbox)] it was seen in,
# [(customer, mailbox of the activity, matched field, direction after 0003)]
# Every activity starts with the direction the code before 0003 gave it: "in" iff the
# customer was in From.
DIRECTION_CASES = [
    # The issue: Jiří writes to Petra, Jana in copy: incoming for both.
    (1, "jiri@client.test", [("INBOX", PETRA_BOX)], [(JIRI, PETRA_BOX, "from", "in"),
                                                     (JANA, PETRA_BOX, "cc", "in")]),
    # Someone else writes, a customer in copy: incoming.
    (2, "stranger@elsewhere.test", [("INBOX", PETRA_BOX)], [(DVORAK, PETRA_BOX, "cc", "in")]),
    # Petra's own email to Jiří, Jana in copy, a copy found in INBOX: outgoing for both.
    (3, "petra@agency.test", [("INBOX", PETRA_BOX)], [(JIRI, PETRA_BOX, "to", "out"),
                                                      (JANA, PETRA_BOX, "cc", "out")]),
    # In the mailbox's Sent folder (whatever its name), From an alias: outgoing, even for
    # the customer in From.
    (4, "prodej@agency.test", [("INBOX", PETRA_BOX), ("Odeslané", PETRA_BOX)],
     [(JIRI, PETRA_BOX, "from", "out"), (JANA, PETRA_BOX, "to", "out")]),
    # From Petra's other (disconnected) mailbox, written in capitals: hers, outgoing.
    (5, "Petra.Old@Agency.TEST", [("INBOX", PETRA_BOX)], [(JANA, PETRA_BOX, "cc", "out")]),
    # From Tomáš's mailbox, logged through Petra's: not hers, so incoming.
    (6, "tomas@agency.test", [("INBOX", PETRA_BOX)], [(DVORAK, PETRA_BOX, "to", "in")]),
    # In Tomáš's Sent folder but logged through Petra's INBOX: incoming for Petra's activity.
    (7, "stranger@elsewhere.test", [("INBOX", PETRA_BOX), ("Sent", TOMAS_BOX)],
     [(JANA, PETRA_BOX, "cc", "in")]),
]
# An activity without a mailbox keeps its direction.
NO_MAILBOX_ACTIVITY = (8, "jiri@client.test", JANA, "cc", "out")


def _old_direction(field: str) -> str:
    return "in" if field == "from" else "out"


def _seed_directions(conn) -> None:
    now = "CURRENT_TIMESTAMP"
    for user_id, email in ((1, "petra@crm.test"), (2, "tomas@crm.test")):
        conn.execute(sa.text(f"INSERT INTO users (id, email, name, role, can_see_activities, can_see_emails, "
                             f"is_enabled, created_at) VALUES (:id, :email, '', 'rep', :yes, :yes, :yes, {now})"),
                     {"id": user_id, "email": email, "yes": True})
    for box_id, user_id, address, state in ((PETRA_BOX, 1, "petra@agency.test", "active"),
                                            (PETRA_OLD_BOX, 1, "petra.old@agency.test", "disconnected"),
                                            (TOMAS_BOX, 2, "tomas@agency.test", "active")):
        conn.execute(sa.text(f"INSERT INTO mailboxes (id, user_id, address, provider, token_refresh_failures, "
                             f"state, connected_at, consecutive_failures, created_at, updated_at) VALUES "
                             f"(:id, :user, :address, 'imap', 0, :state, {now}, 0, {now}, {now})"),
                     {"id": box_id, "user": user_id, "address": address, "state": state})
    for box_id, name, special_use in ((PETRA_BOX, "INBOX", None), (PETRA_BOX, "Odeslané", "\\Sent"),
                                      (TOMAS_BOX, "INBOX", None), (TOMAS_BOX, "Sent", "\\Sent")):
        conn.execute(sa.text(f"INSERT INTO folder_checkpoints (mailbox_id, name, special_use, last_uid, "
                             f"backfill_done, updated_at) VALUES (:box, :name, :use, 0, 0, {now})"),
                     {"box": box_id, "name": name, "use": special_use})
    for customer_id, external_id in ((JIRI, "C-NOVAK"), (JANA, "C-NOVAKOVA"), (DVORAK, "C-DVORAK")):
        conn.execute(sa.text(f"INSERT INTO customers (id, external_id, name, created_at, updated_at) "
                             f"VALUES (:id, :ext, :ext, {now}, {now})"), {"id": customer_id, "ext": external_id})
    insert_email = sa.text(f"INSERT INTO emails (id, dedupe_key, subject, from_addr, to_addrs, cc_addrs, "
                           f"attachments, size, created_at) VALUES (:id, :key, '', :from_, '[]', '[]', '[]', 0, {now})")
    insert_activity = sa.text(f"INSERT INTO activities (email_id, customer_id, mailbox_id, direction, matched_field, "
                              f"matched_address, created_at) VALUES (:email, :customer, :box, :direction, :field, "
                              f"'x@client.test', {now})")
    for email_id, from_, seen, activities in DIRECTION_CASES:
        conn.execute(insert_email, {"id": email_id, "key": f"<{email_id}@test>", "from_": from_})
        for uid, (folder, box_id) in enumerate(seen, start=1):
            conn.execute(sa.text(f"INSERT INTO email_sources (email_id, mailbox_id, folder, uidvalidity, uid, "
                                 f"seen_at) VALUES (:email, :box, :folder, 1, :uid, {now})"),
                         {"email": email_id, "box": box_id, "folder": folder, "uid": 10 * email_id + uid})
        for customer_id, box_id, field, _ in activities:
            conn.execute(insert_activity, {"email": email_id, "customer": customer_id, "box": box_id,
                                           "field": field, "direction": _old_direction(field)})
    email_id, from_, customer_id, field, direction = NO_MAILBOX_ACTIVITY
    conn.execute(insert_email, {"id": email_id, "key": f"<{email_id}@test>", "from_": from_})
    conn.execute(insert_activity, {"email": email_id, "customer": customer_id, "box": None,
                                   "field": field, "direction": direction})


def _directions(conn) -> dict[tuple[int, int], str]:
    return {(e, c): d for e, c, d in conn.execute(sa.text("SELECT email_id, customer_id, direction FROM activities"))}


@pytest.mark.parametrize("backend", BACKENDS)
def test_0003_gives_every_activity_the_emails_direction_and_its_downgrade_the_old_rule(backend, tmp_path):
    from flask_migrate import downgrade, upgrade

    from portal import create_app
    from portal.extensions import db

    fixed = {(e, c): direction for e, _, _, activities in DIRECTION_CASES for c, _, _, direction in activities}
    fixed[NO_MAILBOX_ACTIVITY[0], NO_MAILBOX_ACTIVITY[2]] = NO_MAILBOX_ACTIVITY[4]
    old = {(e, c): _old_direction(field) for e, _, _, activities in DIRECTION_CASES for c, _, field, _ in activities}
    old[NO_MAILBOX_ACTIVITY[0], NO_MAILBOX_ACTIVITY[2]] = NO_MAILBOX_ACTIVITY[4]
    assert fixed != old  # the data holds the wrong directions of the issue

    with _empty_database(backend, tmp_path) as url:
        app = create_app(_config(url, "redis://unused", tmp_path / "instance"))
        with app.app_context():
            upgrade(revision="0002")
            with db.engine.begin() as conn:
                _seed_directions(conn)
                assert _directions(conn) == old
            upgrade(revision="0003")
            with db.engine.connect() as conn:
                assert _directions(conn) == fixed
            downgrade(revision="0002")
            with db.engine.connect() as conn:
                assert _directions(conn) == old  # what the code before 0003 wrote and reads
            upgrade(revision="0003")
            with db.engine.connect() as conn:
                assert _directions(conn) == fixed
            db.engine.dispose()
