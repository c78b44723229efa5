"""How mailboxes and times read on the pages: state in words, what is happening now, dates."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from flask import current_app, flash, g
from flask_login import current_user
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from portal.extensions import db
from portal.mail.errors import fix_steps, plain_words
from portal.models import Mailbox, SyncRun
from portal.models.mailboxes import ACTIVE, DISCONNECTED, PENDING, PROBLEMATIC, SYNCABLE
from portal.queue import enqueue_sync_from_page, job_state, sync_job_id
from portal.runtime_settings import get as setting
from portal.timeutil import utcnow

log = logging.getLogger(__name__)

STATE_WORDS = {
    PENDING: "Connecting",
    ACTIVE: "Active",
    PROBLEMATIC: "Problematic",
    DISCONNECTED: "Disconnected",
}
STATE_HINTS = {
    PENDING: "Connected; the first sync has not finished yet.",
    ACTIVE: "Syncing normally.",
    PROBLEMATIC: "Syncing has stopped until the account is reconnected.",
    DISCONNECTED: "Deleted: nothing is synced; emails already logged stay.",
}
SYNC_NOTICE_FOR = timedelta(minutes=2)
PROVIDER_WORDS = {"imap": "IMAP", "microsoft": "Microsoft 365 / Outlook", "google": "Google"}
SECURITY_WORDS = {"ssl": "SSL/TLS", "starttls": "STARTTLS", "none": "unencrypted"}


@dataclass
class Now:
    """What is happening to a mailbox at this moment, from its job and its running SyncRun."""
    text: str | None = None  # "Queued", "Back-filling 120 of 480", ...
    kind: str | None = None  # queued | syncing | retrying
    done: int = 0
    total: int = 0
    live: bool = False  # a job is queued or running: the page keeps polling
    retry_reason: str | None = None
    retry_words: str | None = None

    @property
    def percent(self) -> int:
        return int(100 * self.done / self.total) if self.total else 0


def live_job(mailbox: Mailbox) -> str | None:
    """'queued', 'started', ... while the mailbox has a live sync job; None otherwise or if Redis is down."""
    if not mailbox.is_syncable:
        return None
    try:
        return job_state(sync_job_id(mailbox.id))
    except RedisError:
        log.warning("Redis unavailable while reading the job of mailbox %s", mailbox.id, exc_info=True)
        return None


def running_run(mailbox: Mailbox) -> SyncRun | None:
    """The mailbox's running SyncRun, if it still heart-beats (a stale one is not 'now')."""
    stale = timedelta(seconds=current_app.config.get("EIS_RUN_STALE_SECONDS", 300))
    return db.session.scalar(
        select(SyncRun).where(SyncRun.mailbox_id == mailbox.id, SyncRun.status == "running",
                              SyncRun.heartbeat_at >= utcnow() - stale)
        .order_by(SyncRun.id.desc()).limit(1))


def now_of(mailbox: Mailbox) -> Now:
    if not mailbox.is_syncable:
        return Now()
    job = live_job(mailbox)
    run = running_run(mailbox)
    now = Now(live=bool(job or run))
    if run is not None:
        now.kind = "syncing"
        now.done, now.total = run.progress_done, run.progress_total
        phase = run.phase or ""
        if phase.startswith("back-filling"):
            now.text = f"Back-filling {run.progress_done} of {run.progress_total}"
            folder = phase.removeprefix("back-filling").strip()
            if folder:
                now.text += f" in {folder}"
        elif phase.startswith("new mail"):
            now.text = f"Syncing {phase}"
            if run.progress_total:
                now.text += f": {run.progress_done} of {run.progress_total}"
        else:
            now.text = "Syncing"
    elif job == "started":
        now.kind, now.text = "syncing", "Syncing"
    elif job:
        now.kind, now.text = "queued", "Queued"
    if mailbox.reason:  # a transient fault while still active: we retry with back-off
        now.retry_reason = mailbox.reason
        now.retry_words = plain_words(mailbox.reason)
        if now.kind is None:
            now.kind = "retrying"
    return now


def problem_of(mailbox: Mailbox) -> dict | None:
    """Words, steps and the provider's own words for a Problematic mailbox."""
    if mailbox.state != PROBLEMATIC:
        return None
    reason = mailbox.reason or "protocol_error"
    steps = fix_steps(reason, support_contact=current_app.config.get("EIS_SUPPORT_CONTACT"))
    return {"reason": reason, "words": plain_words(reason), "steps": steps, "detail": mailbox.detail}


def server_settings(mailbox: Mailbox) -> list[str]:
    """'IMAP imap.example.com:993 (SSL/TLS)', 'SMTP ...' and the login, for the card's
    Server settings disclosure (none for Microsoft and Google: the provider sets them)."""
    if mailbox.provider != "imap":
        return []
    lines = []
    for kind in ("imap", "smtp"):
        host, port, security = (getattr(mailbox, f"{kind}_{field}") for field in ("host", "port", "security"))
        if host:
            lines.append(f"{kind.upper()} {host}:{port} ({SECURITY_WORDS.get(security or '', security)})")
    if not mailbox.smtp_host:
        lines.append("No SMTP server: this account cannot send from the CRM.")
    if mailbox.login and mailbox.login != mailbox.address:
        lines.append(f"Login {mailbox.login}")
    return lines


def last_sync_notice(mailbox: Mailbox, now: Now) -> str | None:
    """'Synced: 3 new emails logged' for a little while after a sync ends, so that a person
    who pressed Sync now (or watches the first sync) is told how it ended."""
    if now.live or mailbox.state not in SYNCABLE:
        return None
    run = db.session.scalar(select(SyncRun).where(SyncRun.mailbox_id == mailbox.id)
                            .order_by(SyncRun.id.desc()).limit(1))
    if run is None or run.status != "succeeded" or run.finished_at is None \
            or utcnow() - run.finished_at > SYNC_NOTICE_FOR:
        return None
    if not run.logged:
        return "Synced: no new customer email."
    return f"Synced: {run.logged} new email{'' if run.logged == 1 else 's'} logged."


def problem_mailboxes() -> list[tuple[int, str]]:
    """(id, address) of the signed-in user's Problematic mailboxes, one query per request
    (the banner on every page)."""
    if "eis_problem_mailboxes" not in g:
        rows: list[tuple[int, str]] = []
        if current_user and current_user.is_authenticated:
            try:
                rows = [tuple(r) for r in db.session.execute(
                    select(Mailbox.id, Mailbox.address)
                    .where(Mailbox.user_id == current_user.id, Mailbox.state == PROBLEMATIC)
                    .order_by(Mailbox.id)).all()]
            except SQLAlchemyError:  # an error page must still render when the database is down
                db.session.rollback()
        g.eis_problem_mailboxes = rows
    return g.eis_problem_mailboxes


QUEUE_DOWN = " The sync queue is not reachable right now; the sync starts once it is."


def announce_linked(mailbox: Mailbox, reconnected: bool, user_id: int, via: str | None = None) -> None:
    """After a mailbox is linked or reconnected (password or OAuth): queue its sync and
    flash what happens next."""
    queued = enqueue_sync_from_page(mailbox.id, "manual" if reconnected else "backfill", user_id)
    if reconnected:
        message = f"{mailbox.address} is reconnected; syncing continues where it stopped."
    else:
        message = (f"{mailbox.address} is connected{f' with {via}' if via else ''}. The first sync brings "
                   f"in the last {setting('backfill_days')} days of customer email.")
    if queued is None:
        flash(message + QUEUE_DOWN, "error")
    else:
        flash(message, "success")
