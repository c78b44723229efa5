"""Signed-in sessions and signing in.

- A session is a UserSession row: the session cookie and the remember-me cookie carry its
  token (User.get_id), so each sign-in gets a new cookie, signing out ends it on the
  server, and disabling a user ends every one at once. The loader refuses an ended or
  expired session and a disabled user.
- Sign-in failures are rate-limited (Flask-Limiter, counters in Redis): after
  EIS_SIGNIN_MAX_FAILURES for one account within EIS_SIGNIN_WINDOW_MINUTES its sign-in
  answers 429 with Retry-After, even with the right password; another limit counts the
  failures from one client address across accounts. The limit keys on the address typed,
  whether an account has it or not, so a lockout tells nothing about who exists.
- An unknown address costs a password hash too (against a dummy), so timing tells nothing either.
- users.last_seen_at is written on page requests, at most once a minute per user.
"""
import time
from datetime import timedelta

from flask import Flask, current_app, make_response, render_template, request, session
from flask_limiter import RequestLimit
from flask_login import current_user, login_user, logout_user
from sqlalchemy import func, select, update
from werkzeug.security import check_password_hash, generate_password_hash

from portal.extensions import db, login_manager
from portal.models import User, UserSession
from portal.models.audit import record
from portal.models.users import hash_token
from portal.timeutil import utcnow
from portal.web.auth.forms import LoginForm

SEEN_EVERY = timedelta(minutes=1)  # at most one write a minute per user
SESSION_HOURS = 12  # a session without "Keep me signed in" ends after this, or when the browser closes
_dummy_hashes: dict[str, str] = {}


def init_app(app: Flask) -> None:
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please sign in to continue."
    login_manager.session_protection = "strong"
    login_manager.user_loader(load_user)
    app.config["REMEMBER_COOKIE_DURATION"] = timedelta(days=int(app.config["EIS_REMEMBER_DAYS"]))
    app.before_request(note_last_seen)


# -- the session -------------------------------------------------------------------------------
def load_user(session_id: str) -> User | None:
    """The session's user, while the session is open and the user enabled."""
    user_id, _, token = session_id.partition(".")
    if not user_id.isdigit() or int(user_id) > 2**31 - 1 or not token:
        return None
    row = db.session.execute(
        select(User, UserSession).join(UserSession, UserSession.user_id == User.id)
        .where(User.id == int(user_id), UserSession.token_hash == hash_token(token),
               UserSession.revoked_at.is_(None), UserSession.expires_at > utcnow())).first()
    if row is None or not row.User.is_enabled:
        return None
    row.User.session_token = token
    return row.User


def begin_session(user: User, *, remember: bool) -> None:
    """A new session for this browser: a new token (so a new remember-me cookie), and a new
    CSRF token, not the one the page had before signing in."""
    lifetime = timedelta(days=int(current_app.config["EIS_REMEMBER_DAYS"])) if remember \
        else timedelta(hours=SESSION_HOURS)
    db.session.add(UserSession.open(user, remember=remember, lifetime=lifetime, client=request.remote_addr))
    db.session.commit()
    session.pop("csrf_token", None)
    login_user(user, remember=remember, duration=lifetime if remember else None)


def end_session() -> None:
    """Sign this browser out, and end its session on the server."""
    if current_user.is_authenticated and current_user.session_token:
        db.session.execute(update(UserSession).where(
            UserSession.token_hash == hash_token(current_user.session_token)).values(revoked_at=utcnow()))
        db.session.commit()
    logout_user()


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


# -- signing in --------------------------------------------------------------------------------
def authenticate(email: str, password: str) -> User | None:
    """The enabled user with this address and password, else None, in about the same time."""
    user = db.session.scalar(select(User).where(func.lower(User.email) == email))
    if user is None or not user.password_hash:
        check_password_hash(_dummy_hash(), password)  # as long as a real check takes
        return None
    if not user.check_password(password) or not user.is_enabled:
        return None
    return user


def _dummy_hash() -> str:
    method = current_app.config.get("EIS_PASSWORD_HASH_METHOD", "scrypt")
    if method not in _dummy_hashes:
        _dummy_hashes[method] = generate_password_hash("not anyone's password", method=method)
    return _dummy_hashes[method]


def account_limit() -> str:
    config = current_app.config
    return f"{int(config['EIS_SIGNIN_MAX_FAILURES'])} per {int(config['EIS_SIGNIN_WINDOW_MINUTES'])} minutes"


def client_limit() -> str:
    config = current_app.config
    return (f"{int(config['EIS_SIGNIN_MAX_FAILURES_PER_CLIENT'])} per "
            f"{int(config['EIS_SIGNIN_WINDOW_MINUTES'])} minutes")


def account_key() -> str:
    """The address typed, lower-cased: counted whether an account has it or not."""
    return "account:" + (request.form.get("email") or "").strip().lower()[:320]


def failed(response) -> bool:
    """Only failed sign-ins count (the form answers 400 then; a success redirects)."""
    return response.status_code == 400


def locked_out(limit: RequestLimit):
    """The sign-in page with the lockout in words, answered 429 (Retry-After is added)."""
    minutes = max(1, round((limit.reset_at - time.time()) / 60)) if limit.reset_at else None
    email = (request.form.get("email") or "").strip().lower()[:320]
    record("sign_in_locked", None, None, email=email, client=request.remote_addr, limit=str(limit.limit))
    db.session.commit()
    message = ("Too many failed sign-ins. Wait" + (f" {minutes} minutes" if minutes else " a while")
               + " and try again, or ask an administrator for a new sign-in link.")
    form = LoginForm()
    return make_response(render_template("auth/login.html", form=form, lockout=message), 429)
