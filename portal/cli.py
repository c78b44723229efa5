"""Operator commands: `flask --app portal eis ...`."""
import os

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from flask_migrate import upgrade
from sqlalchemy import select

from portal.addresses import normalise_address
from portal.extensions import db
from portal.models import ApiToken, User
from portal.models.audit import record
from portal.models.users import ROLES
from portal.timeutil import isoformat, utcnow

eis = AppGroup("eis", help="Email Integration Service operator commands.")
user_cli = AppGroup("user", help="Manage portal users.")
token_cli = AppGroup("token", help="Manage API tokens.")
eis.add_command(user_cli)
eis.add_command(token_cli)


def init_app(app: Flask) -> None:
    app.cli.add_command(eis)


@eis.command("init-db")
def init_db() -> None:
    """Create or upgrade the database schema (runs the migrations)."""
    upgrade()
    click.echo("database is at the latest schema")


@user_cli.command("create")
@click.argument("email")
@click.option("--role", type=click.Choice(ROLES), required=True, help="What the user may do in the portal.")
@click.option("--password-env", metavar="VAR", required=True,
              help="Name of the environment variable that holds the password (kept out of shell history).")
@click.option("--name", default="", help="Display name.")
@click.option("--no-activities", is_flag=True, help="Hide the Activities tab from this user.")
@click.option("--no-emails", is_flag=True, help="Hide email bodies from this user.")
def user_create(email, role, password_env, name, no_activities, no_emails) -> None:
    """Create a user who signs in with EMAIL and the password in $VAR."""
    try:
        email = normalise_address(email)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="EMAIL") from None
    password = os.environ.get(password_env)
    if not password:
        raise click.UsageError(f"environment variable {password_env} is empty or not set")
    if len(password) < 8:
        raise click.UsageError("the password must be at least 8 characters")
    if db.session.scalar(select(User).where(User.email == email)):
        raise click.UsageError(f"a user {email} exists already")
    user = User(email=email, role=role, name=name, can_see_activities=not no_activities,
                can_see_emails=not no_emails)
    user.set_password(password)
    db.session.add(user)
    db.session.commit()
    click.echo(f"created {role} {email}")


@token_cli.command("create")
@click.option("--user", "email", required=True, help="The user the token acts as.")
@click.option("--days", type=click.IntRange(1, 3650), default=None,
              help="How long it works (default EIS_API_TOKEN_DAYS, 365).")
def token_create(email, days) -> None:
    """Print a new API token acting as the user (shown once; only its hash is stored)."""
    user = _user(email)
    days = days or int(current_app.config["EIS_API_TOKEN_DAYS"])
    row, token = ApiToken.issue(user, days)
    db.session.add(row)
    record("api_token_created", None, user, token=row.prefix, expires=isoformat(row.expires_at), by="cli")
    db.session.commit()
    click.echo(token)
    click.echo(f"(token {row.prefix}..., acting as {user.email}, expires {isoformat(row.expires_at)})", err=True)


@token_cli.command("list")
@click.option("--user", "email", help="Only this user's tokens.")
@click.option("--all", "show_all", is_flag=True, help="Also expired and revoked ones.")
def token_list(email, show_all) -> None:
    """List API tokens: id, prefix, user, created, last used, expires, state."""
    statement = select(ApiToken, User.email).join(User, User.id == ApiToken.user_id).order_by(ApiToken.id)
    if email:
        statement = statement.where(User.id == _user(email).id)
    for row, owner in db.session.execute(statement):
        state = "revoked" if row.revoked_at else ("live" if row.live else "expired")
        if state != "live" and not show_all:
            continue
        click.echo("\t".join([str(row.id), row.prefix, owner, isoformat(row.created_at) or "-",
                              isoformat(row.last_used_at) or "never", isoformat(row.expires_at) or "-", state]))


@token_cli.command("revoke")
@click.argument("token")
def token_revoke(token) -> None:
    """Revoke a token by its id or its prefix (as `token list` shows them): it stops working at once."""
    statement = select(ApiToken).where(ApiToken.prefix == token) if not token.isdigit() \
        else select(ApiToken).where(ApiToken.id == int(token))
    rows = db.session.scalars(statement).all()
    if len(rows) != 1:
        raise click.UsageError(f"no single token {token!r}: use an id or a prefix from `token list`")
    row = rows[0]
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        record("api_token_revoked", None, row.user, token=row.prefix, by="cli")
        db.session.commit()
    click.echo(f"token {row.prefix}... revoked")


def _user(email: str) -> User:
    user = db.session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        raise click.UsageError(f"no user {email}")
    return user
