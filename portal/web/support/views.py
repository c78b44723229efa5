from flask import Blueprint, current_app, flash, redirect, request, url_for
from flask_login import current_user
from redis.exceptions import RedisError
from sqlalchemy import desc, func, select
from sqlalchemy.orm import aliased

from portal import diagnose, run_history
from portal.accounts.resync import resync
from portal.extensions import db
from portal.mail.errors import fix_steps, plain_words
from portal.models import Mailbox, MailboxStateChange, SyncRun, User
from portal.models.audit import record
from portal.models.mailboxes import DISCONNECTED, PROBLEMATIC, PROVIDERS, STATES
from portal.queue import job_state, sync_job_id
from portal.web.kit import Page, get_or_404, page_number, page_or_fragment
from portal.web.mailbox_listing import REASONS, MailboxFilters, mailbox_page, state_counts
from portal.web.roles import has_role, roles_required

bp = Blueprint("support", __name__, url_prefix="/support")

READERS = ("support", "it")  # IT reads mailboxes too: most refusals are theirs to fix
RUNS_PER_PAGE = 20
# Who a troubleshooting step is for, when it says so at its start ("IT: ...").
AUDIENCES = ("Mailbox owner", "Support", "IT", "Operators")


@bp.get("/mailboxes")
@roles_required(*READERS)
def mailboxes():
    filters = MailboxFilters.from_request()
    page = mailbox_page(filters, page_number())
    return page_or_fragment(
        "support/mailboxes.html", "support/_mailbox_list.html",
        listing=page, filters=filters, counts=state_counts(), states=STATES, reasons=REASONS, providers=PROVIDERS,
    )


@bp.get("/mailboxes/<int:mailbox_id>")
@roles_required(*READERS)
def mailbox(mailbox_id: int):
    box = get_or_404(Mailbox, mailbox_id)
    actor = aliased(User)
    history = db.session.execute(
        select(MailboxStateChange, actor.email).outerjoin(actor, actor.id == MailboxStateChange.actor_id)
        .where(MailboxStateChange.mailbox_id == box.id).order_by(desc(MailboxStateChange.id)).limit(50)
    ).all()
    runs = _runs(box)
    return page_or_fragment(
        "support/mailbox.html", "support/mailbox.html",
        mailbox=box, history=history, runs=runs, timeline=_timeline(box, runs), live=_status(box),
        problem=_problem(box), retention_days=current_app.config["EIS_RUN_RETENTION_DAYS"],
        may_sync=has_role(current_user, "support"), may_check=has_role(current_user, "support"),
    )


@bp.get("/mailboxes/<int:mailbox_id>/status")
@roles_required(*READERS)
def mailbox_status(mailbox_id: int):
    """The live status line (state, queued or syncing, progress); polled while a sync is on."""
    box = get_or_404(Mailbox, mailbox_id)
    return page_or_fragment("support/status.html", "support/_status.html", mailbox=box, live=_status(box))


@bp.get("/mailboxes/<int:mailbox_id>/why")
@roles_required("support")
def why(mailbox_id: int):
    """Read the mailbox live (read-only, headers only) and explain each matching message."""
    box = get_or_404(Mailbox, mailbox_id)
    result = None
    if "q" in request.args:
        query = request.args.get("q", "")
        result = diagnose.why(box, query, support_contact=current_app.config.get("EIS_SUPPORT_CONTACT"))
        # Support read a rep's mailbox live: who, which mailbox, what was searched.
        record("mailbox_read_by_support", current_user, box, address=box.address, query=result.query,
               found=len(result.checks), error=result.error.reason if result.error else None)
        db.session.commit()
    return page_or_fragment("support/why.html", "support/_why.html", mailbox=box, result=result,
                            steps=_steps_with_audience)


@bp.post("/mailboxes/<int:mailbox_id>/sync")
@roles_required("support")
def sync_now(mailbox_id: int):
    box = get_or_404(Mailbox, mailbox_id)
    if box.state == DISCONNECTED:
        flash("This mailbox is disconnected: its owner must connect it again before it can sync.", "error")
        return redirect(url_for(".mailbox", mailbox_id=box.id))
    was_problematic = box.state == PROBLEMATIC
    report = resync([box], current_user, trigger="resync" if was_problematic else "manual")
    if was_problematic:
        flash("The mailbox is syncing again: a sync was queued to check that the cause is fixed. "
              "If the server still refuses, it turns Problematic again with the server's words.", "success")
    elif report.already:
        flash("A sync of this mailbox is already queued or running.", "info")
    elif report.unqueued:
        flash("The queue could not be reached; the scheduler will start the sync within a minute.", "error")
    else:
        flash("Sync queued.", "success")
    return redirect(url_for(".mailbox", mailbox_id=box.id))


def _runs(box: Mailbox) -> Page:
    page = page_number("runs")
    asker = aliased(User)
    total = db.session.scalar(select(func.count(SyncRun.id)).where(SyncRun.mailbox_id == box.id)) or 0
    last = max(1, -(-total // RUNS_PER_PAGE))
    page = min(page, last)
    rows = db.session.execute(
        select(SyncRun, asker.email).outerjoin(asker, asker.id == SyncRun.requested_by_id)
        .where(SyncRun.mailbox_id == box.id).order_by(desc(SyncRun.id))
        .limit(RUNS_PER_PAGE).offset((page - 1) * RUNS_PER_PAGE)
    ).all()
    return Page(items=rows, page=page, per_page=RUNS_PER_PAGE, total=total)


def _timeline(box: Mailbox, runs: Page) -> list:
    """This page's runs with the days of quiet polls that fall among them: a day goes on the
    page of the first run older than its last quiet poll (the last page takes the oldest)."""
    days = run_history.quiet_days(box.id)
    if runs.items:
        if runs.page > 1:
            newer = db.session.scalar(select(SyncRun.started_at).where(SyncRun.mailbox_id == box.id)
                                      .order_by(desc(SyncRun.id)).offset((runs.page - 1) * runs.per_page - 1).limit(1))
            days = [d for d in days if newer is None or d.last_at < newer]
        if runs.page < runs.pages:
            oldest = runs.items[-1][0].started_at
            days = [d for d in days if d.last_at >= oldest]
    askers = {run.id: asker for run, asker in runs.items}
    merged = run_history.interleave([run for run, _ in runs.items], days)
    return [(item, None if getattr(item, "quiet", False) else askers.get(item.id)) for item in merged]


def _status(box: Mailbox) -> dict:
    """What is happening now: the job (queued, started) and the running run's progress."""
    job, queue_error = None, None
    if box.is_syncable:
        try:
            job = job_state(sync_job_id(box.id))
        except (RedisError, OSError) as exc:
            queue_error = f"The queue could not be reached ({type(exc).__name__})."
    running = db.session.scalar(
        select(SyncRun).where(SyncRun.mailbox_id == box.id, SyncRun.status == "running")
        .order_by(desc(SyncRun.id)).limit(1))
    return {"job": job, "running": running, "queue_error": queue_error, "live": bool(job or running)}


def _problem(box: Mailbox) -> dict | None:
    reason = box.reason
    detail = box.detail
    if not reason:
        return None
    return {"reason": reason, "words": plain_words(reason), "detail": detail,
            "steps": _steps_with_audience(reason), "retrying": box.state != PROBLEMATIC}


def _steps_with_audience(reason: str) -> list[tuple[str | None, str]]:
    """fix_steps split into (who, what) so the page can show whom each step is for."""
    steps = []
    for step in fix_steps(reason, support_contact=current_app.config.get("EIS_SUPPORT_CONTACT")):
        who, sep, what = step.partition(": ")
        if sep and who.startswith(AUDIENCES):
            steps.append((who, what))
        else:
            steps.append((None, step))
    return steps
