from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import func, select
from sqlalchemy.orm import joinedload

from portal import runtime_settings
from portal.accounts.resync import resync
from portal.extensions import db
from portal.models import Mailbox
from portal.models.audit import record
from portal.models.mailboxes import DISCONNECTED, PROBLEMATIC, PROVIDERS, STATES
from portal.web.admin.forms import SettingsForm
from portal.web.admin.health import configuration_notes, gather
from portal.web.kit import page_number, page_or_fragment, whole_number
from portal.web.mailbox_listing import REASONS, MailboxFilters, mailbox_page, state_counts
from portal.web.roles import roles_required

bp = Blueprint("admin", __name__, url_prefix="/admin")

CONFIRM_SHOWN = 50  # mailboxes listed by name on the confirm step
MAX_SELECTED = 1000


# -- resync ------------------------------------------------------------------------------------
@bp.get("/mailboxes")
@roles_required()
def mailboxes():
    filters = MailboxFilters.from_request()
    page = mailbox_page(filters, page_number())
    counts = state_counts()
    return page_or_fragment(
        "admin/mailboxes.html", "admin/_mailbox_list.html", listing=page, filters=filters, counts=counts,
        states=STATES, reasons=REASONS, providers=PROVIDERS, problematic_by_reason=_problematic_by_reason(),
    )


@bp.get("/resync")
@roles_required()
def resync_confirm():
    """The confirm step: what a resync will touch, counted, before anything happens."""
    choice = _choice(request.args)
    if choice is None:
        flash("Choose the mailboxes to resync first: tick them in the list, or resync all Problematic ones.", "error")
        return render_template("admin/resync_confirm.html", choice=None, total=0, sample=[], skipped=0), 400
    statement, count = choice["query"]
    total = db.session.scalar(count) or 0
    skipped = db.session.scalar(count.where(Mailbox.state == DISCONNECTED)) or 0
    sample = db.session.scalars(statement.options(joinedload(Mailbox.owner)).order_by(Mailbox.id)
                                .limit(CONFIRM_SHOWN)).all()
    return render_template("admin/resync_confirm.html", choice=choice, total=total, sample=sample,
                           skipped=skipped)


@bp.post("/resync")
@roles_required()
def resync_run():
    choice = _choice(request.form)
    if choice is None or request.form.get("confirmed") != "yes":
        flash("Nothing was resynced: choose the mailboxes and confirm on the confirm step.", "error")
        return render_template("admin/resync_confirm.html", choice=None, total=0, sample=[], skipped=0), 400
    statement, _count = choice["query"]
    mailboxes = db.session.scalars(statement.order_by(Mailbox.id)).all()
    report = resync(mailboxes, current_user)
    expected = request.form.get("expected", "")
    note = ""
    if whole_number(expected, 0) is not None and int(expected) != len(mailboxes):
        note = f" {len(mailboxes)} matched when it ran; {expected} were shown on the confirm step."
    flash(report.sentence() + note + " The worker syncs them in the next minutes; their state shows here.",
          "success" if report.asked else "info")
    return redirect(url_for(".mailboxes", state=PROBLEMATIC if choice["scope"] == "problematic" else None))


def _choice(values) -> dict | None:
    """scope=problematic (optionally reason=R), or scope=selected with mailbox=ID (repeated)."""
    scope = values.get("scope", "")
    if scope == "problematic":
        reason = values.get("reason", "")
        reason = reason if reason in REASONS else ""
        where = [Mailbox.state == PROBLEMATIC] + ([Mailbox.reason == reason] if reason else [])
        return {"scope": scope, "reason": reason, "ids": [],
                "query": (select(Mailbox).where(*where), select(func.count(Mailbox.id)).where(*where))}
    if scope == "selected":
        raw = values.getlist("mailbox")
        if not raw or len(raw) > MAX_SELECTED or not all(whole_number(v) for v in raw):
            return None
        ids = sorted({int(v) for v in raw})
        where = Mailbox.id.in_(ids)
        return {"scope": scope, "reason": "", "ids": ids,
                "query": (select(Mailbox).where(where), select(func.count(Mailbox.id)).where(where))}
    return None


def _problematic_by_reason() -> list[tuple[str, int]]:
    return db.session.execute(
        select(Mailbox.reason, func.count(Mailbox.id)).where(Mailbox.state == PROBLEMATIC)
        .group_by(Mailbox.reason).order_by(func.count(Mailbox.id).desc())
    ).all()


# -- settings ----------------------------------------------------------------------------------
@bp.route("/settings", methods=["GET", "POST"])
@roles_required()
def settings():
    current = {key: runtime_settings.get(key) for key in runtime_settings.KNOWN}
    form = SettingsForm(data=current) if request.method == "GET" else SettingsForm()
    if request.method == "POST":
        if not form.validate_on_submit():
            return render_template("admin/settings.html", form=form, current=current, defaults=_defaults()), 400
        changed = {key: getattr(form, key).data for key in runtime_settings.KNOWN
                   if getattr(form, key).data != current[key]}
        if not changed:
            flash("Nothing changed.", "info")
            return redirect(url_for(".settings"))
        for key, value in changed.items():
            runtime_settings.set_value(key, value)
        record("settings_changed", current_user, None, before={k: current[k] for k in changed}, after=changed)
        db.session.commit()
        flash("Settings saved: " + ", ".join(f"{k.replace('_', ' ')} {current[k]} → {v}" for k, v in changed.items())
              + ".", "success")
        return redirect(url_for(".settings"))
    return render_template("admin/settings.html", form=form, current=current, defaults=_defaults())


def _defaults() -> dict:
    return {key: runtime_settings.default(key) for key in runtime_settings.KNOWN}


# -- health ------------------------------------------------------------------------------------
@bp.get("/health")
@roles_required()
def health():
    return page_or_fragment("admin/health.html", "admin/_health.html", health=gather(),
                            notes=configuration_notes())

