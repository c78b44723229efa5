"""Email Integration Service: the Flask application factory."""
import os
from pathlib import Path

import click
from flask import Flask

ENV_KEYS = {
    "DATABASE_URL": "SQLALCHEMY_DATABASE_URI",
    "REDIS_URL": "REDIS_URL",
    "SECRET_KEY": "SECRET_KEY",
    "EIS_ENCRYPTION_KEYS": "EIS_ENCRYPTION_KEYS",
}
ENV_PREFIX = "EIS_"


class ConfigError(click.ClickException):
    """The deployment's configuration cannot run safely; the message says what to set.
    A ClickException, so the `flask ... eis` commands print it as a plain error line."""


def create_app(test_config: dict | None = None) -> Flask:
    """Build the app: defaults -> instance/config.py -> environment -> test_config."""
    root = Path(__file__).resolve().parent.parent
    app = Flask(
        __name__,
        instance_path=os.environ.get("EIS_INSTANCE_PATH") or str(root / "instance"),
        instance_relative_config=True,
        template_folder=str(root / "templates"),
        static_folder=str(root / "static"),
    )
    app.config.from_object("portal.settings")
    app.config.from_pyfile("config.py", silent=True)
    _load_environment(app)
    if test_config:
        app.config.from_mapping(test_config)

    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    if not app.config.get("SQLALCHEMY_DATABASE_URI"):
        app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///" + os.path.join(app.instance_path, "eis.sqlite3")
    app.config["SQLALCHEMY_DATABASE_URI"] = _normalise_db_url(app.config["SQLALCHEMY_DATABASE_URI"])
    _refuse_unsafe_secret(app)
    app.json.ensure_ascii = False  # Czech names stay readable in the API's JSON

    # The app's parts are imported here, not at the top: `import portal.mail.rules` (or any
    # portal module) runs this file first, and must not pull in the whole web layer.
    from portal import cli, extensions, models, queue, web
    from portal.webhooks import outbox
    from portal.extensions import csrf, db, htmx, limiter, login_manager, migrate

    db.init_app(app)
    migrate.init_app(app, db, directory=str(root / "migrations"), render_as_batch=True)
    login_manager.init_app(app)
    csrf.init_app(app)
    htmx.init_app(app)
    _rate_limit_storage(app)
    limiter.init_app(app)
    queue.init_app(app)
    outbox.init_app(app)  # events written with the changes; their jobs queued after the commit
    web.init_app(app)
    cli.init_app(app)
    del extensions, models  # imported for their side effect: the models are registered
    return app


def _load_environment(app: Flask) -> None:
    for env_name, key in ENV_KEYS.items():
        if os.environ.get(env_name):
            app.config[key] = os.environ[env_name]
    for name, value in os.environ.items():
        if name.startswith(ENV_PREFIX) and name not in ENV_KEYS and value != "":
            app.config[name] = _coerce(app.config.get(name), value)


def _coerce(default, value: str):
    """Environment values are strings; give them the type of the default they replace."""
    if isinstance(default, bool):
        return value.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        try:
            return int(value)
        except ValueError as exc:
            raise ConfigError(f"expected a whole number, got {value!r}") from exc
    if isinstance(default, float):
        try:
            return float(value)
        except ValueError as exc:
            raise ConfigError(f"expected a number, got {value!r}") from exc
    return value


def _normalise_db_url(url: str) -> str:
    # Heroku-style and bare postgresql:// URLs go through psycopg 3, the driver we install.
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def _rate_limit_storage(app: Flask) -> None:
    """Rate-limit counters in the deployment's Redis. The embedded Redis of a single-process
    development set-up (no REDIS_URL) is not reachable by URL: its counters stay in memory.
    When Redis is away, sign-in is not refused for that (RATELIMIT_SWALLOW_ERRORS)."""
    app.config.setdefault("RATELIMIT_STORAGE_URI", app.config.get("REDIS_URL") or "memory://")
    app.config.setdefault("RATELIMIT_SWALLOW_ERRORS", True)
    app.config.setdefault("RATELIMIT_KEY_PREFIX", "eis:ratelimit")


def _refuse_unsafe_secret(app: Flask) -> None:
    if app.debug or app.testing or app.config.get("EIS_ALLOW_DEV_SECRET"):
        return
    if app.config.get("SECRET_KEY") in (None, "", "dev", "change-me"):
        raise ConfigError(
            "SECRET_KEY is missing or still the default. Set SECRET_KEY to a long random value, "
            "e.g. SECRET_KEY=$(python -c 'import secrets; print(secrets.token_hex(32))')."
        )
