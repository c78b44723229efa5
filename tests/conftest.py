"""Real parts for tests: a redis-server per session, SQLite and PostgreSQL databases made
by the migrations, a clean database and Redis database for every test.

EIS_TEST_DATABASES (default "sqlite,postgresql") picks the backends; every test that uses
the `app` fixture runs on each. PostgreSQL is the one at EIS_TEST_PG_URL (default the
machine's 127.0.0.1:5432, trust auth): if it cannot be reached the tests fail, not skip.
"""
import os
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from flask.testing import FlaskClient

from devservers import Dovecot, OAuthTestServer, RedisServer, SmtpSink, WorkerProcess

PG_ADMIN_URL = os.environ.get("EIS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
BACKENDS = [b.strip() for b in os.environ.get("EIS_TEST_DATABASES", "sqlite,postgresql").split(",") if b.strip()]
ENCRYPTION_KEY = Fernet.generate_key().decode()


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request, tmp_path_factory):
    """A migrated, empty database of one backend for the whole session."""
    backend = request.param
    if backend == "sqlite":
        url = "sqlite:///" + str(tmp_path_factory.mktemp("sqlite") / "eis.sqlite3")
        _migrate(url, tmp_path_factory)
        yield url
        return
    if backend != "postgresql":
        raise ValueError(f"unknown backend {backend!r} in EIS_TEST_DATABASES")
    name = f"eis_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        _migrate(url, tmp_path_factory)
        yield url
    finally:
        sa.engine.create_engine(url).dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _migrate(url: str, tmp_path_factory) -> None:
    from flask_migrate import upgrade

    from portal import create_app

    app = create_app(_config(url, "redis://unused", tmp_path_factory.mktemp("instance")))
    with app.app_context():
        upgrade()
        from portal.extensions import db

        db.engine.dispose()


def _config(db_url: str, redis_url: str, instance: Path) -> dict:
    return {
        "TESTING": True,
        "SECRET_KEY": "test-secret-" + uuid.uuid4().hex,
        "SQLALCHEMY_DATABASE_URI": db_url,
        "REDIS_URL": redis_url,
        "EIS_ENCRYPTION_KEYS": ENCRYPTION_KEY,
        "WTF_CSRF_ENABLED": True,
        "SERVER_NAME": None,
        "EIS_PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000",  # scrypt costs 150 ms a user
        "EIS_MAIL_HOSTS_ALLOW": "127.0.0.1",  # the test servers run on loopback
    }


class FreshContextClient(FlaskClient):
    """Each request gets its own app context (and so its own `g` and database session), as
    in production; without it Flask reuses the test's context and flask-login's cached user."""

    def open(self, *args, **kwargs):
        from portal.extensions import db

        with self.application.app_context():
            response = super().open(*args, **kwargs)
        db.session.expire_all()  # the test's session sees what the request wrote
        return response


@pytest.fixture
def app(database_url, redis_server, tmp_path):
    from portal import create_app
    from portal.extensions import db
    from portal.queue import get_redis

    app = create_app(_config(database_url, redis_server.url, tmp_path))
    app.test_client_class = FreshContextClient
    with app.app_context():
        _empty_tables(db)
        get_redis(app).flushdb()
        yield app
        db.session.remove()
        db.engine.dispose()


def _empty_tables(db) -> None:
    # DELETE, not TRUNCATE: on tables this small it is ten times faster on PostgreSQL.
    with db.engine.begin() as conn:
        for table in reversed(db.metadata.sorted_tables):
            conn.execute(table.delete())


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def world(app):
    """Factories that build the CRM world in a line."""
    from tests.factories import World

    return World(app)


@pytest.fixture(scope="session")
def dovecot():
    # Its own folder under /tmp, not pytest's: pytest resets /tmp/pytest-of-<user> to mode
    # 0700 whenever a pytest session starts, and Dovecot's auth process (user dovecot)
    # then cannot read the passwd files ("Temporary authentication failure").
    server = Dovecot()
    server.start()
    yield server
    server.close()


@pytest.fixture
def mail(app, world, dovecot):
    """Mailboxes on the session's Dovecot, linked through the product's own code."""
    from tests.mailworld import MailWorld

    app.config["EIS_TLS_CA_FILE"] = str(dovecot.cert_path)
    return MailWorld(app, world, dovecot)


@pytest.fixture(scope="session")
def oauth_server():
    """The stand-in for Microsoft's and Google's authorization servers (devservers/oauth.py)."""
    server = OAuthTestServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def oauth_dovecot(oauth_server):
    """A Dovecot whose oauth2 passdb asks our authorization server about every XOAUTH2 token
    (passwords still work for the tests' own APPENDs)."""
    server = Dovecot(oauth2_introspection_url=oauth_server.introspection_url)
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def smtp_sink(oauth_server):
    """An SMTP server (aiosmtpd) that takes passwords and checks XOAUTH2 tokens with the
    authorization server."""
    from tests.oauthworld import introspection_checker

    sink = SmtpSink(token_checker=introspection_checker(oauth_server))
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture
def worker_process(app):
    """start() runs `python worker.py --no-scheduler` as a separate process against the test's
    database and Redis, configured through the environment from the app's config as an
    operator would; it is stopped at the end of the test."""
    workers = []

    def start(**extra) -> "WorkerProcess":
        worker = WorkerProcess(app.config, extra)
        worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


AXE = Path(__file__).resolve().parent / "js" / "node_modules" / "axe-core" / "axe.min.js"


@pytest.fixture
def live_server(app):
    """The test app served over real HTTP in a thread, for Chromium. It also serves axe-core
    (tests/js, from the npm registry) from the app's own origin, so that a page's CSP lets the
    browser tests inject it into the page state they are in."""
    import threading

    from werkzeug.serving import make_server

    if not AXE.exists():
        raise RuntimeError("axe-core is missing: run ./scripts/install-deps.sh (npm ci in tests/js)")
    axe = AXE.read_bytes()

    def with_axe(environ, start_response):
        if environ.get("PATH_INFO") == "/__tests__/axe.min.js":
            start_response("200 OK", [("Content-Type", "text/javascript"), ("Content-Length", str(len(axe)))])
            return [axe]
        return app(environ, start_response)

    server = make_server("127.0.0.1", 0, with_axe, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Debian's Chromium (never a downloaded one), as TESTBED.md says; missing it fails."""
    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        raise RuntimeError("Chromium is missing: run ./scripts/install-deps.sh (apt-get install chromium)")
    return {**browser_type_launch_args, "executable_path": chromium,
            "args": ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]}


@pytest.fixture
def signed_in_page(page, live_server):
    """sign_in(user) -> the Playwright page, signed in through the real form."""
    from tests.factories import PASSWORD

    def sign_in(user):
        page.goto(live_server + "/login")
        page.fill("input[name=email]", user.email)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(live_server + "/")
        return page

    return sign_in


@pytest.fixture
def person(page, live_server):
    """A person in Chromium at the live portal (tests/journeys.py). Any CSP violation or
    script error on the pages they open fails the test."""
    from tests.journeys import Person

    someone = Person(page, live_server)
    yield someone
    someone.assert_clean()


def pytest_collection_modifyitems(config, items):
    """The phone-sized journeys run on one database: a layout does not depend on it."""
    kept, dropped = [], []
    for item in items:
        (dropped if "postgresql" in item.name and "-phone" in item.name else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
