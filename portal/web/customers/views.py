"""Customers, the Activities timeline and logged emails.

Permissions (set by an admin per user): without "Activities" every page here is 403;
without "Emails" the timeline and headers show but bodies and attachments do not.
"""
import logging
import re
from datetime import timedelta
from io import BytesIO

from flask import Blueprint, abort, make_response, render_template, request, send_file, url_for
from flask_login import current_user
from redis.exceptions import RedisError
from sqlalchemy import func, or_, select
from sqlalchemy.orm import joinedload, selectinload

from portal import crm
from portal.extensions import db, htmx
from portal.mail.attachments import attachment_bytes
from portal.models import Activity, Customer, CustomerPrimaryEmail, DealCustomer, Email, Mailbox
from portal.models.mailboxes import DISCONNECTED
from portal.queue import enqueue_sync
from portal.timeutil import utcnow
from portal.web.customers.attachments import safe_filename
from portal.web.kit import MAX_ID, int_arg, page_or_fragment
from portal.web.mailboxes.present import live_job
from portal.web.roles import ALL_ROLES, roles_required
from portal.web.sanitize import email_document, has_remote_images

bp = Blueprint("customers", __name__)

log = logging.getLogger(__name__)

CUSTOMERS_PER_PAGE = 25
TIMELINE_STEP = 25
TIMELINE_MAX = 500
STALE_AFTER = timedelta(minutes=2)
EMAIL_HTML_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox"
_MIME_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")


def _require_activities() -> None:
    if not current_user.can_see_activities:
        abort(403, description="Your account may not see customers' Activities. Ask an administrator "
                               "to give you the Activities permission.")


def _require_emails() -> None:
    _require_activities()
    if not current_user.can_see_emails:
        abort(403, description="Your account may not read email bodies and attachments. Ask an administrator "
                               "to give you the Emails permission.")


def _valid_external_id(value: str) -> bool:
    """As the API accepts them: 1 to 200 printable characters (a NUL would upset PostgreSQL)."""
    return 0 < len(value) <= 200 and value.isprintable()


# --- customers ------------------------------------------------------------------------------


@bp.get("/customers")
@roles_required(*ALL_ROLES)
def index():
    _require_activities()
    q = "".join(ch for ch in (request.args.get("q") or "") if ch.isprintable()).strip()[:200]
    page = int_arg("page", 1, 1, 10**6)
    stmt = select(Customer)
    if q:
        stmt = stmt.where(or_(
            Customer.name.icontains(q, autoescape=True),
            Customer.external_id.icontains(q, autoescape=True),
            Customer.primary_emails.any(CustomerPrimaryEmail.address.icontains(q.lower(), autoescape=True)),
        ))
    total = db.session.scalar(select(func.count()).select_from(stmt.subquery()))
    pages = max(1, -(-total // CUSTOMERS_PER_PAGE))
    page = min(page, pages)
    customers = db.session.scalars(
        stmt.options(selectinload(Customer.primary_emails))
        .order_by(Customer.name, Customer.id).limit(CUSTOMERS_PER_PAGE).offset((page - 1) * CUSTOMERS_PER_PAGE)
    ).all()
    stats = {}
    if customers:
        stats = {cid: (count, last) for cid, count, last in db.session.execute(
            select(Activity.customer_id, func.count(Activity.id), func.max(Activity.email_date))
            .where(Activity.customer_id.in_([c.id for c in customers])).group_by(Activity.customer_id))}
    return render_template("customers/index.html", customers=customers, stats=stats, q=q, page=page,
                           pages=pages, total=total)


@bp.get("/customers/<path:external_id>")
@roles_required(*ALL_ROLES)
def detail(external_id: str):
    """The customer with the Activities tab. htmx requests (polling, load more) get the timeline only."""
    _require_activities()
    customer = crm.get_customer(external_id) if _valid_external_id(external_id) else None
    if customer is None:
        abort(404, description="There is no customer with this id.")
    limit = int_arg("limit", TIMELINE_STEP, 1, TIMELINE_MAX)
    mailboxes = db.session.scalars(select(Mailbox).where(
        Mailbox.user_id == current_user.id, Mailbox.state != DISCONNECTED).order_by(Mailbox.id)).all()
    wants_fragment = bool(htmx) and not htmx.boosted
    if not wants_fragment:
        _sync_stale(mailboxes)  # opening the Activities tab asks for fresh email (DESIGN rule 8)
    context = {"customer": customer, **_timeline(customer, limit, mailboxes)}
    if not wants_fragment:
        context["deals"] = db.session.scalars(
            select(DealCustomer).where(DealCustomer.customer_id == customer.id)
            .options(joinedload(DealCustomer.deal))).all()
        context["viewer_mailboxes"] = mailboxes
    return page_or_fragment("customers/detail.html", "customers/_timeline.html", **context)


def _sync_stale(mailboxes: list[Mailbox]) -> None:
    cutoff = utcnow() - STALE_AFTER
    for mailbox in mailboxes:
        if mailbox.is_syncable and (mailbox.last_sync_at is None or mailbox.last_sync_at < cutoff):
            try:
                enqueue_sync(mailbox.id, "adhoc", current_user.id)  # a duplicate is "already queued"
            except (RedisError, RuntimeError):
                log.warning("could not queue an ad hoc sync of mailbox %s", mailbox.id, exc_info=True)


def _timeline(customer: Customer, limit: int, mailboxes: list[Mailbox]) -> dict:
    total = db.session.scalar(select(func.count(Activity.id)).where(Activity.customer_id == customer.id))
    activities = db.session.scalars(
        select(Activity).where(Activity.customer_id == customer.id)
        .options(joinedload(Activity.email), joinedload(Activity.mailbox))
        .order_by(Activity.email_date.desc().nulls_last(), Activity.id.desc()).limit(limit)
    ).all()
    syncing = [m for m in mailboxes if live_job(m)]
    return {"activities": activities, "total": total, "limit": limit, "syncing": syncing,
            "more_url": url_for("customers.detail", external_id=customer.external_id,
                                limit=min(limit + TIMELINE_STEP, TIMELINE_MAX)) if total > limit else None,
            "poll_url": url_for("customers.detail", external_id=customer.external_id, limit=limit)}


# --- one email ------------------------------------------------------------------------------


def _email_or_404(email_id: int) -> Email:
    email = db.session.get(Email, email_id) if email_id <= MAX_ID else None
    if email is None or not email.activities:  # only logged email is ever shown
        abort(404, description="There is no such logged email.")
    return email


@bp.get("/emails/<int:email_id>")
@roles_required(*ALL_ROLES)
def email(email_id: int):
    _require_activities()
    message = _email_or_404(email_id)
    activities = db.session.scalars(
        select(Activity).where(Activity.email_id == message.id)
        .options(joinedload(Activity.customer), joinedload(Activity.mailbox)).order_by(Activity.id)).all()
    mailbox_ids = {s.mailbox_id for s in message.sources}
    mailboxes = db.session.scalars(select(Mailbox).where(Mailbox.id.in_(mailbox_ids))).all() if mailbox_ids else []
    can_read = current_user.can_see_emails
    html = message.html_body if can_read else None
    return render_template(
        "emails/show.html", email=message, activities=activities, mailboxes=mailboxes, can_read=can_read,
        has_html=bool(html), remote_images=has_remote_images(html),
        text_body=message.text_body if can_read else None,
    )


@bp.get("/emails/<int:email_id>/html")
@roles_required(*ALL_ROLES)
def email_html(email_id: int):
    """The HTML body, cleaned, for a sandboxed iframe: no script, no remote content."""
    _require_emails()
    message = _email_or_404(email_id)
    if not message.html_body:
        abort(404, description="This email has no HTML body.")
    response = make_response(email_document(message.html_body))
    response.headers["Content-Type"] = "text/html; charset=utf-8"
    response.headers["Content-Security-Policy"] = EMAIL_HTML_CSP
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.get("/emails/<int:email_id>/attachments/<int:n>")
@roles_required(*ALL_ROLES)
def attachment(email_id: int, n: int):
    _require_emails()
    message = _email_or_404(email_id)
    listed = message.attachments or []
    data = attachment_bytes(message.raw_packed, n, listed)
    if data is None:
        abort(404, description="There is no such attachment.")
    content_type = (listed[n].get("content_type") or "").lower()
    if not _MIME_TYPE.match(content_type):
        content_type = "application/octet-stream"
    response = send_file(BytesIO(data), mimetype=content_type, as_attachment=True,
                         download_name=safe_filename(listed[n].get("filename")), max_age=0)
    # Never rendered by the browser, even if someone opens it in a tab.
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response.headers["Cache-Control"] = "private, no-store"
    return response
