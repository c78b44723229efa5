"""Mailboxes: link with a password (tried first), list, disconnect, status and runs, sync now."""
from datetime import timedelta

from flask import g

from portal import run_history
from portal.accounts import linking
from portal.extensions import db
from portal.models import Mailbox
from portal.models.audit import record
from portal.models.mailboxes import DISCONNECTED
from portal.queue import enqueue_sync, job_state, sync_job_id
from portal.timeutil import isoformat, utcnow
from portal.web.api.blueprint import bp
from portal.web.api.errors import ApiError
from portal.web.api.validation import address, check_fields, json_body, string

MAILBOX_FIELDS = {"address", "login", "password", "imap_host", "imap_port", "imap_security",
                  "smtp_host", "smtp_port", "smtp_security"}
OVERSEERS = ("support", "it", "admin")  # may look at anyone's mailbox
SYNC_ASKERS = ("support", "admin")  # may ask anyone's mailbox to sync


QUIET_DAYS_SHOWN = 7


def mailbox_json(mailbox: Mailbox, *, runs: int = 0) -> dict:
    data = {
        "id": mailbox.id, "address": mailbox.address, "provider": mailbox.provider,
        "owner_email": mailbox.owner.email, "state": mailbox.state, "reason": mailbox.reason,
        "detail": mailbox.detail, "imap_host": mailbox.imap_host, "imap_port": mailbox.imap_port,
        "imap_security": mailbox.imap_security, "smtp_host": mailbox.smtp_host,
        "smtp_port": mailbox.smtp_port, "smtp_security": mailbox.smtp_security,
        "connected_at": isoformat(mailbox.connected_at), "last_sync_at": isoformat(mailbox.last_sync_at),
        "last_success_at": isoformat(mailbox.last_success_at), "next_sync_at": isoformat(mailbox.next_sync_at),
        "consecutive_failures": mailbox.consecutive_failures,
        "job": job_state(sync_job_id(mailbox.id)) if mailbox.is_syncable else None,
    }
    if runs:
        data["runs"] = [run_json(r) for r in mailbox.runs.limit(runs)]
        # Quiet polls are not runs: their counts per day, the last week's.
        since = (utcnow() - timedelta(days=QUIET_DAYS_SHOWN - 1)).date()
        data["quiet_days"] = [
            {"day": d.day.isoformat(), "polls": d.polls, "imap_commands": d.imap_commands,
             "first_at": isoformat(d.first_at), "last_at": isoformat(d.last_at)}
            for d in run_history.quiet_days(mailbox.id, since)]
    return data


def run_json(run) -> dict:
    return {
        "id": run.id, "trigger": run.trigger, "status": run.status, "started_at": isoformat(run.started_at),
        "finished_at": isoformat(run.finished_at), "heartbeat_at": isoformat(run.heartbeat_at),
        "phase": run.phase, "progress_done": run.progress_done, "progress_total": run.progress_total,
        "seen": run.seen, "logged": run.logged, "duplicates": run.duplicates, "ignored": run.ignored or {},
        "bad_messages": run.bad_messages, "bytes_fetched": run.bytes_fetched, "imap_commands": run.imap_commands,
        "error_class": run.error_class, "error_detail": run.error_detail,
    }


def _port(data: dict, field: str) -> int:
    value = data.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ApiError(422, "invalid_field", f"'{field}' must be a port number from 1 to 65535.", field=field)
    return value


def _security(data: dict, field: str) -> str:
    value = data.get(field)
    if value not in ("ssl", "starttls", "none"):
        raise ApiError(422, "invalid_field", f"'{field}' must be 'ssl', 'starttls' or 'none'.", field=field)
    return value


def _settings_from(data: dict) -> linking.ImapSettings:
    check_fields(data, required={"address", "password", "imap_host", "imap_port", "imap_security"},
                 optional=MAILBOX_FIELDS)
    password = data.get("password")
    if not isinstance(password, str) or not password:
        raise ApiError(422, "invalid_field", "'password' must be a non-empty string.", field="password")
    settings = linking.ImapSettings(
        address=address(data["address"], "address"),
        login=string(data, "login", max_length=320) if data.get("login") else None,
        password=password,
        imap_host=string(data, "imap_host", max_length=255),
        imap_port=_port(data, "imap_port"), imap_security=_security(data, "imap_security"),
    )
    settings.login = settings.login or settings.address
    if data.get("smtp_host"):
        settings.smtp_host = string(data, "smtp_host", max_length=255)
        settings.smtp_port = _port(data, "smtp_port")
        settings.smtp_security = _security(data, "smtp_security")
    return settings


@bp.post("/me/mailboxes")
def link_mailbox():
    settings = _settings_from(json_body())
    try:
        mailbox, reconnected = linking.link_imap_mailbox(g.api_user, settings)
    except linking.LinkError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None
    db.session.commit()
    enqueue_sync(mailbox.id, "manual" if reconnected else "backfill", g.api_user.id)
    return mailbox_json(mailbox), 200 if reconnected else 201


@bp.get("/me/mailboxes")
def my_mailboxes():
    rows = db.session.query(Mailbox).filter_by(user_id=g.api_user.id).order_by(Mailbox.id).all()
    return {"mailboxes": [mailbox_json(m) for m in rows]}


@bp.delete("/me/mailboxes/<int:mailbox_id>")
def delete_mailbox(mailbox_id: int):
    mailbox = _own_mailbox(mailbox_id)
    if mailbox.state != DISCONNECTED:
        linking.disconnect(mailbox, g.api_user)
        db.session.commit()
    return mailbox_json(mailbox)


@bp.get("/mailboxes/<int:mailbox_id>")
def get_mailbox(mailbox_id: int):
    return mailbox_json(_visible_mailbox(mailbox_id, OVERSEERS), runs=20)


@bp.post("/mailboxes/<int:mailbox_id>/sync")
def sync_mailbox(mailbox_id: int):
    mailbox = _visible_mailbox(mailbox_id, OVERSEERS)
    if mailbox.user_id != g.api_user.id and g.api_user.role not in SYNC_ASKERS:
        raise ApiError(403, "forbidden", "Only the owner, support or an admin may ask this mailbox to sync.")
    if not mailbox.is_syncable:
        raise ApiError(409, f"mailbox_{mailbox.state}",
                       f"This mailbox is {mailbox.state}"
                       + (f" ({mailbox.reason}): reconnect it first." if mailbox.reason else "; connect it again first."))
    _job, created = enqueue_sync(mailbox.id, "manual", g.api_user.id)
    if created:
        record("sync_asked", g.api_user, mailbox)
        db.session.commit()
    return {"mailbox_id": mailbox.id, "queued": created, "job": job_state(sync_job_id(mailbox.id))}, 202


def _own_mailbox(mailbox_id: int) -> Mailbox:
    mailbox = db.session.get(Mailbox, mailbox_id)
    if mailbox is None or mailbox.user_id != g.api_user.id:
        raise ApiError(404, "not_found", f"You have no mailbox {mailbox_id}.")
    return mailbox


def _visible_mailbox(mailbox_id: int, overseers: tuple[str, ...]) -> Mailbox:
    mailbox = db.session.get(Mailbox, mailbox_id)
    if mailbox is None or (mailbox.user_id != g.api_user.id and g.api_user.role not in overseers):
        # A rep cannot tell another rep's mailbox from a missing one.
        raise ApiError(404, "not_found", f"No mailbox {mailbox_id} that you may see.")
    return mailbox
