"""Signed-in sessions: flask-login's set-up, the session's user (while enabled and while the
session's generation is theirs: disabling a user ends every session at once), and who is
using the portal (users.last_seen_at, cheaply)."""
from datetime import timedelta

from flask import Flask, request
from flask_login import current_user
from sqlalchemy import update

from portal.extensions import db, login_manager
from portal.models import User
from portal.timeutil import utcnow

SEEN_EVERY = timedelta(minutes=1)  # at most one write a minute per user


def init_app(app: Flask) -> None:
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please sign in to continue."
    login_manager.session_protection = "strong"
    login_manager.user_loader(load_user)
    app.before_request(note_last_seen)


def load_user(session_id: str) -> User | None:
    """The session's user, while enabled and while the session's generation is theirs."""
    user_id, _, generation = session_id.partition(".")
    if not (user_id.isdigit() and generation.isdigit()) or int(user_id) > 2**31 - 1:
        return None
    user = db.session.get(User, int(user_id))
    if user is None or not user.is_enabled or (user.session_generation or 0) != int(generation):
        return None
    return user


def note_last_seen() -> None:
    """users.last_seen_at on page requests, at most once a minute per user (the scheduler
    syncs the mailboxes of people using the portal more often); API calls do not count."""
    if request.endpoint in (None, "static") or request.path.startswith("/api/"):
        return
    if not current_user.is_authenticated:
        return
    now = utcnow()
    if current_user.last_seen_at is not None and now - current_user.last_seen_at < SEEN_EVERY:
        return
    db.session.execute(update(User).where(User.id == current_user.id).values(last_seen_at=now))
    db.session.commit()
    current_user.last_seen_at = now
