"""Flask extensions, created unbound; create_app() binds them."""
import sqlite3

from flask_htmx import HTMX
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect
from sqlalchemy import MetaData, event
from sqlalchemy.engine import Engine

# Named constraints so Alembic migrations are the same on SQLite and PostgreSQL.
naming = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
db = SQLAlchemy(metadata=MetaData(naming_convention=naming))
migrate = Migrate()
login_manager = LoginManager()
csrf = CSRFProtect()
htmx = HTMX()
# Rate limits (sign-in): counters in Redis (RATELIMIT_STORAGE_URI, set by create_app);
# a moving window, so a lockout lasts until the oldest failure is a window old.
limiter = Limiter(key_func=get_remote_address, strategy="moving-window", headers_enabled=True)


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """SQLite in WAL mode: the portal's pages read while a worker writes a batch, instead
    of waiting for it (the portal, the workers and the scheduler share the file).
    synchronous=NORMAL: a commit no longer waits for the disk (a quarter of a back-fill's
    time went to commits, bench/sync.py). A killed process loses nothing committed; a
    power cut may lose the last commits, never consistency, and a sync's checkpoint is in
    the same transaction as its emails, so the next sync redoes exactly what was lost.
    PostgreSQL is untouched."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
