from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from portal.extensions import db, limiter
from portal.models.audit import record
from portal.web.auth import sessions as signin
from portal.web.auth.forms import ChoosePasswordForm, LoginForm
from portal.web.auth.invite import user_of

bp = Blueprint("auth", __name__)


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(signin.account_limit, key_func=signin.account_key, methods=["POST"], scope="signin-account",
               deduct_when=signin.failed, on_breach=signin.locked_out)
@limiter.limit(signin.client_limit, methods=["POST"], scope="signin-client",
               deduct_when=signin.failed, on_breach=signin.locked_out)
def login():
    if current_user.is_authenticated:
        return redirect(url_for("main.index"))
    form = LoginForm()
    if form.validate_on_submit():
        email = form.email.data.strip().lower()
        user = signin.authenticate(email, form.password.data)
        if user is None:
            # One message whatever the cause (no such user, wrong password, disabled).
            flash("Wrong email or password.", "error")
            record("sign_in_failed", None, None, email=email[:320], client=request.remote_addr)
            db.session.commit()
        else:
            signin.begin_session(user, remember=form.remember.data)
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
        signin.end_session()
        signin.begin_session(user, remember=False)
        flash("Your password is set. Welcome.", "success")
        return redirect(url_for("main.index"))
    status = 422 if request.method == "POST" else 200
    return render_template("auth/invitation.html", user=user, form=form), status


@bp.route("/logout", methods=["POST"])
@login_required
def logout():
    signin.end_session()  # on the server too: the session and remember-me cookies stop working
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))


def _safe_next(target: str | None) -> str:
    # Only same-site relative paths: an open redirect would let a link steal a session.
    if target and target.startswith("/") and not target.startswith("//") and not urlsplit(target).netloc:
        return target
    return url_for("main.index")
