import csv
import io

from flask import Blueprint, Response, stream_with_context
from sqlalchemy import desc, func, select
from sqlalchemy.orm import aliased

from portal.extensions import db
from portal.models import AuditEvent, Mailbox, User
from portal.models.mailboxes import DISCONNECTED, PROVIDERS, STATES
from portal.timeutil import isoformat, utcnow
from portal.web.it.scopes import PASSWORD_ONLY, REQUIRED_SCOPES, check_scopes
from portal.web.kit import arg, page_number, page_or_fragment, paginate, whole_number
from portal.web.mailbox_listing import REASONS, MailboxFilters, mailbox_page
from portal.web.roles import roles_required

bp = Blueprint("it", __name__, url_prefix="/it")

AUDIT_PER_PAGE = 50
# Detail keys never shown even if a caller of audit.record() put one there by mistake.
SECRET_WORDS = ("password", "secret", "token", "credential")
CSV_COLUMNS = (
    "mailbox_id", "address", "provider", "state", "reason", "owner_email", "owner_name",
    "connected_at", "connected_by", "login", "imap_host", "imap_port", "imap_security",
    "smtp_host", "smtp_port", "smtp_security", "scopes_granted", "scopes_missing",
    "token_refreshed_at", "token_expires_at", "token_refresh_failures", "last_success_at",
)


@bp.get("/accounts")
@roles_required("it")
def accounts():
    filters = MailboxFilters.from_request()
    page = mailbox_page(filters, page_number())
    connected_by = _emails({m.connected_by_id for m in page.items} - {None})
    rows = [(m, check_scopes(m.provider, m.scopes_granted), _token_health(m)) for m in page.items]
    return page_or_fragment(
        "it/accounts.html", "it/_accounts_list.html", listing=page, rows=rows, filters=filters,
        connected_by=connected_by, states=STATES, reasons=REASONS, providers=PROVIDERS, required=REQUIRED_SCOPES,
        password_only=PASSWORD_ONLY,
    )


@bp.get("/accounts.csv")
@roles_required("it")
def accounts_csv():
    """Every account, streamed; no secret (password or token) is ever part of it."""
    owner, by = aliased(User), aliased(User)
    statement = (
        select(Mailbox, owner.email, owner.name, by.email)
        .join(owner, owner.id == Mailbox.user_id).outerjoin(by, by.id == Mailbox.connected_by_id)
        .order_by(Mailbox.id).execution_options(yield_per=500)
    )

    def generate():
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        for mailbox, owner_email, owner_name, by_email in db.session.execute(statement):
            scopes = check_scopes(mailbox.provider, mailbox.scopes_granted)
            writer.writerow([_cell(v) for v in (
                mailbox.id, mailbox.address, mailbox.provider, mailbox.state, mailbox.reason,
                owner_email, owner_name, isoformat(mailbox.connected_at), by_email, mailbox.login,
                mailbox.imap_host, mailbox.imap_port, mailbox.imap_security, mailbox.smtp_host,
                mailbox.smtp_port, mailbox.smtp_security,
                " ".join(scopes.granted) if scopes.oauth else PASSWORD_ONLY, " ".join(scopes.missing),
                isoformat(mailbox.token_refreshed_at), isoformat(mailbox.token_expires_at),
                mailbox.token_refresh_failures, isoformat(mailbox.last_success_at),
            )])
            if buffer.tell() > 64 * 1024:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    filename = f"connected-accounts-{utcnow():%Y%m%d-%H%M}.csv"
    return Response(stream_with_context(generate()), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@bp.get("/audit")
@roles_required("it")
def audit():
    actions = db.session.scalars(select(AuditEvent.action).distinct().order_by(AuditEvent.action)).all()
    action = arg("action", tuple(actions))
    actor = aliased(User)
    statement = select(AuditEvent).outerjoin(actor, actor.id == AuditEvent.actor_id)
    count = select(func.count(AuditEvent.id))
    if action:
        statement, count = statement.where(AuditEvent.action == action), count.where(AuditEvent.action == action)
    page = paginate(statement.order_by(desc(AuditEvent.at), desc(AuditEvent.id)), count, page_number(),
                    AUDIT_PER_PAGE)
    users = _emails({e.actor_id for e in page.items} - {None} | _target_ids(page.items, "user"))
    mailbox_ids = _target_ids(page.items, "mailbox")
    mailboxes = dict(db.session.execute(
        select(Mailbox.id, Mailbox.address).where(Mailbox.id.in_(sorted(mailbox_ids)))).all()) if mailbox_ids else {}
    events = [(e, _detail_lines(e.detail)) for e in page.items]
    return page_or_fragment("it/audit.html", "it/_audit_list.html", listing=page, events=events, actions=actions,
                            action=action, users=users, mailboxes=mailboxes)


def _target_ids(events, target_type: str) -> set[int]:
    return {whole_number(e.target_id) for e in events if e.target_type == target_type} - {None}


def _emails(user_ids: set[int]) -> dict[int, str]:
    if not user_ids:
        return {}
    return dict(db.session.execute(select(User.id, User.email).where(User.id.in_(sorted(user_ids)))).all())


def _token_health(mailbox: Mailbox) -> dict:
    """How the OAuth token is doing, as IT reads it: 'ok', 'warn' or 'bad' and a sentence."""
    if mailbox.provider not in REQUIRED_SCOPES:
        return {"level": "none", "text": "password login: no token"}
    if mailbox.state == DISCONNECTED:
        return {"level": "none", "text": "disconnected: token wiped"}
    if mailbox.token_refresh_failures:
        n = mailbox.token_refresh_failures
        return {"level": "bad", "text": f"{n} failed refresh{'es' if n != 1 else ''} in a row"}
    if mailbox.token_expires_at is None:
        return {"level": "warn", "text": "no token expiry recorded"}
    if mailbox.token_expires_at < utcnow():
        return {"level": "ok", "text": "access token expired; renewed at the next sync"}
    return {"level": "ok", "text": "valid"}


def _detail_lines(detail: dict | None) -> list[tuple[str, str]]:
    """An audit event's detail as (what, text) lines; before/after pairs as 'old → new'."""
    if not isinstance(detail, dict):
        return []
    before, after = detail.get("before"), detail.get("after")
    lines = []
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after), key=str):
            if _secret(key):
                continue
            old, new = before.get(key), after.get(key)
            lines.append((key, f"{_text(old)} → {_text(new)}" if old != new else _text(new)))
    elif isinstance(before, dict):
        lines += [(f"before {k}", _text(v)) for k, v in before.items() if not _secret(k)]
    for key, value in detail.items():
        if key in ("before", "after") or _secret(key):
            continue
        lines.append((key, _text(value)))
    return lines


def _secret(key) -> bool:
    return any(word in str(key).lower() for word in SECRET_WORDS)


def _text(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value)
    return str(value)


def _cell(value):
    """A CSV cell a spreadsheet will not run as a formula."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value
