"""The migrations on a database that holds data: 0002 renames the raw message column and
keeps the first release's gzip rows readable; its downgrade leaves only gzip behind."""
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
