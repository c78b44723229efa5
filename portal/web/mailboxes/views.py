"""Pages of one's own mailboxes. Every id in a URL is looked up among the signed-in user's
mailboxes only: another user's mailbox is indistinguishable from a missing one (404)."""
import logging

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select
from werkzeug.datastructures import MultiDict

from portal import run_history
from portal.accounts import linking
from portal.extensions import db, htmx
from portal.models import Mailbox
from portal.models.audit import record
from portal.models.mailboxes import DISCONNECTED, PROBLEMATIC
from portal.queue import enqueue_sync_from_page
from portal.runtime_settings import get as setting
from portal.web.kit import MAX_ID, page_or_fragment
from portal.web.mailboxes import present
from portal.web.mailboxes.forms import ConnectForm, ReconnectForm
from portal.web.roles import ALL_ROLES, roles_required

bp = Blueprint("mailboxes", __name__)

log = logging.getLogger(__name__)
SERVER_FIELDS = ("login", "imap_host", "imap_port", "imap_security", "smtp_host", "smtp_port", "smtp_security")




def _own_mailbox(mailbox_id: int) -> Mailbox:
    mailbox = db.session.get(Mailbox, mailbox_id) if mailbox_id <= MAX_ID else None
    if mailbox is None or mailbox.user_id != current_user.id:
        abort(404, description="You have no such email account.")
    return mailbox


def _card(mailbox: Mailbox, **extra) -> dict:
    """Everything the mailbox card (templates/mailboxes/_mailbox.html) shows."""
    now = present.now_of(mailbox)
    if "notice" not in extra and not extra.get("confirm_delete"):
        extra["notice"] = present.last_sync_notice(mailbox, now)
    return {
        "mailbox": mailbox,
        "now": now,
        "problem": present.problem_of(mailbox),
        "provider_words": present.PROVIDER_WORDS.get(mailbox.provider, mailbox.provider),
        "server_settings": present.server_settings(mailbox),
        "state_hint": present.STATE_HINTS.get(mailbox.state, ""),
        "poll": now.live and not extra.get("confirm_delete") and not extra.get("reconnect_form"),
        "oob_banner": bool(htmx) and not htmx.boosted,  # a fragment refreshes the banner too
        **extra,
    }


def _fragment_or_redirect(mailbox: Mailbox, message: str, category: str = "success", **extra):
    """htmx gets the refreshed card with the message in it; a plain form a redirect and a flash."""
    if htmx and not htmx.boosted:
        return page_or_fragment("mailboxes/detail.html", "mailboxes/_mailbox.html",
                                card=_card(mailbox, notice=message, notice_category=category, **extra))
    flash(message, category)
    return redirect(url_for("mailboxes.mine"))


def _queue_sync(mailbox: Mailbox, trigger: str) -> bool | None:
    return enqueue_sync_from_page(mailbox.id, trigger, current_user.id)


@bp.get("/mailboxes")
@roles_required(*ALL_ROLES)
def mine():
    rows = db.session.scalars(select(Mailbox).where(Mailbox.user_id == current_user.id)
                              .order_by(Mailbox.connected_at, Mailbox.id)).all()
    connected = [m for m in rows if m.state != DISCONNECTED]
    deleted = [m for m in rows if m.state == DISCONNECTED]
    return render_template("mailboxes/mine.html", cards=[_card(m) for m in connected], deleted=deleted,
                           backfill_days=setting("backfill_days"))


@bp.get("/mailboxes/<int:mailbox_id>")
@roles_required(*ALL_ROLES)
def detail(mailbox_id: int):
    """The mailbox's card (the fragment htmx polls while it syncs) or its page with recent syncs."""
    mailbox = _own_mailbox(mailbox_id)
    runs = mailbox.runs.limit(10).all()
    # Quiet polls are counted per day, not kept as runs: shown as one line a day among them.
    timeline = run_history.interleave(runs, run_history.quiet_days(mailbox.id))
    return page_or_fragment("mailboxes/detail.html", "mailboxes/_mailbox.html", card=_card(mailbox), runs=timeline)


@bp.route("/mailboxes/connect", methods=["GET", "POST"])
@roles_required(*ALL_ROLES)
def connect():
    form = ConnectForm()
    link_error = None
    if form.validate_on_submit():
        settings = form.settings_for(form.address.data)
        try:
            mailbox, reconnected = linking.link_imap_mailbox(current_user, settings)
        except linking.LinkError as exc:
            db.session.rollback()  # nothing saved
            link_error = exc
        else:
            db.session.commit()
            present.announce_linked(mailbox, reconnected, current_user.id)
            return redirect(url_for("mailboxes.mine"))
    status = 422 if request.method == "POST" else 200
    return render_template("mailboxes/connect.html", form=form, link_error=link_error), status


@bp.post("/mailboxes/<int:mailbox_id>/sync")
@roles_required(*ALL_ROLES)
def sync_now(mailbox_id: int):
    mailbox = _own_mailbox(mailbox_id)
    if not mailbox.is_syncable:
        what = "reconnect it first" if mailbox.state == PROBLEMATIC else "connect it again first"
        return _fragment_or_redirect(mailbox, f"{mailbox.address} is {mailbox.state}: {what}.", "error")
    queued = _queue_sync(mailbox, "manual")
    if queued is None:
        return _fragment_or_redirect(mailbox, "The sync queue is not reachable right now; try again in a minute.",
                                     "error")
    if queued:
        record("sync_asked", current_user, mailbox)
        db.session.commit()
        return _fragment_or_redirect(mailbox, f"Sync of {mailbox.address} queued.")
    return _fragment_or_redirect(mailbox, f"A sync of {mailbox.address} is already queued or running.", "info")


@bp.route("/mailboxes/<int:mailbox_id>/reconnect", methods=["GET", "POST"])
@roles_required(*ALL_ROLES)
def reconnect(mailbox_id: int):
    """Re-enter the password of a Problematic mailbox: reconnected in place, checkpoints kept."""
    mailbox = _own_mailbox(mailbox_id)
    form = ReconnectForm(formdata=_with_stored_settings(mailbox) if request.method == "POST" else None,
                         obj=mailbox)
    if mailbox.state != PROBLEMATIC:
        message = (f"{mailbox.address} is {present.STATE_WORDS[mailbox.state].lower()}; there is nothing to "
                   "reconnect." + (" Connect it again as a new account." if mailbox.state == DISCONNECTED else ""))
        if request.method == "POST":
            return _fragment_or_redirect(mailbox, message, "info")
        flash(message, "info")
        return redirect(url_for("mailboxes.mine"))
    link_error = None
    if mailbox.provider == "imap" and form.validate_on_submit():
        try:
            mailbox, _ = linking.link_imap_mailbox(current_user, form.settings_for(mailbox.address))
        except linking.LinkError as exc:
            db.session.rollback()
            db.session.refresh(mailbox)
            link_error = exc
        else:
            db.session.commit()
            queued = _queue_sync(mailbox, "manual")
            message = f"{mailbox.address} is reconnected; syncing continues where it stopped."
            if queued is None:
                return _fragment_or_redirect(mailbox, message + present.QUEUE_DOWN, "error")
            return _fragment_or_redirect(mailbox, message)
    status = 422 if request.method == "POST" else 200
    if htmx and not htmx.boosted:  # the inline form on the card: errors shown in the card
        return page_or_fragment("mailboxes/reconnect.html", "mailboxes/_mailbox.html",
                                card=_card(mailbox, reconnect_form=form, link_error=link_error),
                                status=200)
    return render_template("mailboxes/reconnect.html", mailbox=mailbox, form=form, link_error=link_error,
                           card=_card(mailbox)), status


def _with_stored_settings(mailbox: Mailbox) -> MultiDict:
    """The posted form over the mailbox's stored settings: the card's inline form sends only
    the password, the full form everything."""
    data = MultiDict({field: str(getattr(mailbox, field)) for field in SERVER_FIELDS
                      if getattr(mailbox, field) is not None})
    for field in ("imap_security", "smtp_security"):
        data.setdefault(field, "ssl")
    for key in request.form:
        data.setlist(key, request.form.getlist(key))
    return data


@bp.route("/mailboxes/<int:mailbox_id>/delete", methods=["GET", "POST"])
@roles_required(*ALL_ROLES)
def delete(mailbox_id: int):
    """A confirm step first; deleting wipes the credentials and keeps every logged email."""
    mailbox = _own_mailbox(mailbox_id)
    if request.method == "GET":
        return page_or_fragment("mailboxes/delete.html", "mailboxes/_mailbox.html",
                                card=_card(mailbox, confirm_delete=True), mailbox=mailbox)
    if mailbox.state != DISCONNECTED:
        linking.disconnect(mailbox, current_user)
        db.session.commit()
    return _fragment_or_redirect(
        mailbox, f"The connection to {mailbox.address} is deleted. Emails already logged stay on the customers' "
                 "Activities.")
