"""Admin -> Users: the list, one form per user, Add user (with an invitation link), Disable.

Each user is edited on their own page with one Save, so no edit is ever lost to another
row's button. Disabling a user ends their sessions and API tokens at once.
"""
from flask import abort, flash, redirect, render_template, request, session, url_for
from flask_login import current_user
from sqlalchemy import func, select, update

from portal.extensions import db
from portal.models import ApiToken, Mailbox, User
from portal.models.audit import record
from portal.models.mailboxes import DISCONNECTED
from portal.models.users import ROLES
from portal.timeutil import utcnow
from portal.web.admin.forms import NewUserForm, UserForm
from portal.web.admin.views import bp
from portal.web.auth.invite import invite_url
from portal.web.kit import Page, arg, get_or_404, page_number
from portal.web.roles import roles_required

USERS_PER_PAGE = 100
SHOWN_LINK = "eis_invite_links"  # invitation links shown once to the admin who made them


@bp.get("/users")
@roles_required()
def users():
    counts = select(Mailbox.user_id, func.count(Mailbox.id).label("n")).where(
        Mailbox.state != DISCONNECTED).group_by(Mailbox.user_id).subquery()
    q = arg("q").lower()
    statement = select(User, func.coalesce(counts.c.n, 0)).outerjoin(counts, counts.c.user_id == User.id)
    count = select(func.count(User.id))
    if q:
        match = func.lower(User.email).contains(q, autoescape=True) | func.lower(User.name).contains(q, autoescape=True)
        statement, count = statement.where(match), count.where(match)
    total = db.session.scalar(count) or 0
    page = max(1, min(page_number(), -(-total // USERS_PER_PAGE) or 1))
    rows = db.session.execute(statement.order_by(User.email).limit(USERS_PER_PAGE)
                              .offset((page - 1) * USERS_PER_PAGE)).all()
    return render_template("admin/users.html", page=Page(rows, page, USERS_PER_PAGE, total), q=q)


@bp.route("/users/new", methods=["GET", "POST"])
@roles_required()
def new_user():
    form = NewUserForm(data={"role": "rep", "can_see_activities": True, "can_see_emails": True}) \
        if request.method == "GET" else NewUserForm()
    if form.validate_on_submit():
        if db.session.scalar(select(User.id).where(func.lower(User.email) == form.email.data)):
            form.email.errors.append(f"{form.email.data} already has an account.")
        else:
            user = User(email=form.email.data, name=(form.name.data or "").strip(), role=form.role.data,
                        can_see_activities=bool(form.can_see_activities.data),
                        can_see_emails=bool(form.can_see_emails.data))
            db.session.add(user)
            db.session.flush()
            record("user_created", current_user, user, email=user.email, role=user.role)
            db.session.commit()
            _show_link_once(user)
            flash(f"{user.email} is added as {user.role}. Send them the invitation link below: with it they "
                  "choose their password and sign in.", "success")
            return redirect(url_for(".edit_user", user_id=user.id))
    status = 400 if request.method == "POST" else 200
    return render_template("admin/user_new.html", form=form, roles=ROLES), status


@bp.route("/users/<int:user_id>", methods=["GET", "POST"])
@roles_required()
def edit_user(user_id: int):
    user = get_or_404(User, user_id)
    form = UserForm(obj=user) if request.method == "GET" else UserForm()
    if request.method == "POST" and form.validate_on_submit():
        before = _permissions(user)
        after = {"name": (form.name.data or "").strip(), "role": form.role.data,
                 "can_see_activities": bool(form.can_see_activities.data),
                 "can_see_emails": bool(form.can_see_emails.data)}
        if before["role"] == "admin" and after["role"] != "admin" and _last_admin(user):
            form.role.errors.append(f"{user.email} is the only administrator: make someone else an admin first.")
        elif before == after:
            flash(f"Nothing to change for {user.email}.", "info")
            return redirect(url_for(".edit_user", user_id=user.id))
        else:
            for key, value in after.items():
                setattr(user, key, value)
            if before["name"] == after["name"]:  # the audit names what changed beside the permissions
                del before["name"], after["name"]
            record("user_changed", current_user, user, email=user.email, before=before, after=after)
            db.session.commit()
            changed = ", ".join(f"{k.replace('_', ' ')}: {_yes(before[k])} → {_yes(after[k])}"
                                for k in after if before[k] != after[k])
            flash(f"{user.email} changed ({changed}).", "success")
            return redirect(url_for(".users"))
    status = 400 if request.method == "POST" else 200
    tokens = db.session.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id.desc())).all()
    return render_template("admin/user_edit.html", user=user, form=form, roles=ROLES,
                           link=session.pop(SHOWN_LINK, {}).get(str(user.id)), api_tokens=tokens,
                           tokens=sum(1 for t in tokens if t.live)), status


@bp.post("/users/<int:user_id>/invite")
@roles_required()
def invite(user_id: int):
    """A new link with which the user chooses a password (also the way to reset a forgotten one)."""
    user = get_or_404(User, user_id)
    if not user.is_enabled:
        flash(f"{user.email} is disabled: enable them first.", "error")
        return redirect(url_for(".edit_user", user_id=user.id))
    record("invite_link_made", current_user, user, email=user.email)
    db.session.commit()
    _show_link_once(user)
    flash(f"A new sign-in link for {user.email} is below. Any earlier link stops working once it is used.", "success")
    return redirect(url_for(".edit_user", user_id=user.id))


@bp.route("/users/<int:user_id>/disable", methods=["GET", "POST"])
@roles_required()
def disable(user_id: int):
    """A confirm step, then: disabled, signed out everywhere, API tokens revoked."""
    user = get_or_404(User, user_id)
    refusal = _why_not_disable(user)
    if refusal:
        flash(refusal, "error")
        return redirect(url_for(".edit_user", user_id=user.id))
    if request.method == "GET":
        return render_template("admin/user_disable.html", user=user, tokens=_live_tokens(user))
    user.is_enabled = False
    user.end_sessions()
    revoked = db.session.execute(update(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
                                 .values(revoked_at=utcnow())).rowcount
    record("user_disabled", current_user, user, email=user.email, tokens_revoked=revoked)
    db.session.commit()
    flash(f"{user.email} is disabled: signed out everywhere, {revoked} API token{'' if revoked == 1 else 's'} "
          "revoked.", "success")
    return redirect(url_for(".users"))


@bp.post("/users/<int:user_id>/tokens/<int:token_id>/revoke")
@roles_required()
def revoke_token(user_id: int, token_id: int):
    user = get_or_404(User, user_id)
    token = get_or_404(ApiToken, token_id)
    if token.user_id != user.id:
        abort(404)
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        record("api_token_revoked", current_user, user, token=token.prefix)
        db.session.commit()
    flash(f"API token {token.prefix}… of {user.email} is revoked: it stops working at once.", "success")
    return redirect(url_for(".edit_user", user_id=user.id))


@bp.post("/users/<int:user_id>/enable")
@roles_required()
def enable(user_id: int):
    user = get_or_404(User, user_id)
    if user.is_enabled:
        abort(409, description=f"{user.email} is not disabled.")
    user.is_enabled = True
    record("user_enabled", current_user, user, email=user.email)
    db.session.commit()
    flash(f"{user.email} may sign in again. Their old API tokens stay revoked: make new ones if needed.", "success")
    return redirect(url_for(".edit_user", user_id=user.id))


def _why_not_disable(user: User) -> str | None:
    if not user.is_enabled:
        return f"{user.email} is already disabled."
    if user.id == current_user.id:
        return "You cannot disable yourself: ask another administrator."
    if user.role == "admin" and _last_admin(user):
        return f"{user.email} is the only administrator: make someone else an admin first."
    return None


def _show_link_once(user: User) -> None:
    links = dict(session.get(SHOWN_LINK) or {})
    links[str(user.id)] = invite_url(user)
    session[SHOWN_LINK] = links


def _live_tokens(user: User) -> int:
    return sum(1 for token in db.session.scalars(select(ApiToken).where(ApiToken.user_id == user.id)) if token.live)


def _permissions(user: User) -> dict:
    return {"name": user.name or "", "role": user.role, "can_see_activities": bool(user.can_see_activities),
            "can_see_emails": bool(user.can_see_emails)}


def _last_admin(user: User) -> bool:
    others = db.session.scalar(select(func.count(User.id)).where(
        User.role == "admin", User.is_enabled, User.id != user.id)) or 0
    return others == 0


def _yes(value) -> str:
    return ("yes" if value else "no") if isinstance(value, bool) else (str(value) or "—")
