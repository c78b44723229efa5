"""Operator commands: `flask --app portal eis ...`."""
import os

import click
from flask import Flask
from flask.cli import AppGroup
from flask_migrate import upgrade
from sqlalchemy import select

from portal.addresses import normalise_address
from portal.extensions import db
from portal.models import ApiToken, User
from portal.models.users import ROLES

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
def token_create(email) -> None:
    """Print a new API token acting as the user (shown once; only its hash is stored)."""
    user = db.session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        raise click.UsageError(f"no user {email}")
    row, token = ApiToken.issue(user)
    db.session.add(row)
    db.session.commit()
    click.echo(token)
