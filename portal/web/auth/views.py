from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import User
from portal.models.audit import record
from portal.web.auth.forms import ChoosePasswordForm, LoginForm
from portal.web.auth.invite import user_of

bp = Blueprint("auth", __name__)


@bp.route("/login", methods=["GET", "POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("main.index"))
    form = LoginForm()
    if form.validate_on_submit():
        user = db.session.scalar(select(User).where(func.lower(User.email) == form.email.data.strip().lower()))
        if user is None or not user.check_password(form.password.data):
            flash("Wrong email or password.", "error")
        elif not user.is_enabled:
            flash("This account is disabled. Ask an administrator.", "error")
        else:
            login_user(user, remember=form.remember.data)
            return redirect(_safe_next(request.args.get("next")))
    return render_template("auth/login.html", form=form), (400 if request.method == "POST" else 200)


@bp.route("/invite/<token>", methods=["GET", "POST"])
def invitation(token: str):
    """Choose a password with an invitation link, then be signed in."""
    user = user_of(token)
    if user is None:
        return render_template("auth/invitation.html", user=None, form=None), 410
    form = ChoosePasswordForm()
    if form.validate_on_submit():
        user.set_password(form.password.data)
        user.end_sessions()  # a password chosen anew: any other session of the account ends
        record("password_chosen", user, user, email=user.email)
        db.session.commit()
        logout_user()
        login_user(user)
        flash("Your password is set. Welcome.", "success")
        return redirect(url_for("main.index"))
    status = 422 if request.method == "POST" else 200
    return render_template("auth/invitation.html", user=user, form=form), status


@bp.route("/logout", methods=["POST"])
@login_required
def logout():
    logout_user()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))


def _safe_next(target: str | None) -> str:
    # Only same-site relative paths: an open redirect would let a link steal a session.
    if target and target.startswith("/") and not target.startswith("//") and not urlsplit(target).netloc:
        return target
    return url_for("main.index")
