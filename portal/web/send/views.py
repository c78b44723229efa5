"""Send email pages: the form fragment, its POST, and an outgoing email's live state.

The fragment templates/customers/_send_form.html is also included by the customer page,
which only has `customer` and `current_user`: it then builds its state through the
`send_form_state` template global registered here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from flask import Blueprint, abort, current_app, request, url_for
from flask_login import current_user
from sqlalchemy import select
from werkzeug.exceptions import RequestEntityTooLarge

from portal import crm
from portal.extensions import db, htmx
from portal.models import Customer, Mailbox, OutgoingEmail
from portal.sending import checks, compose, deliver
from portal.sending.accept import MAX_KEY_LENGTH, accept, new_key
from portal.web.kit import customer_or_404, page_or_fragment
from portal.web.roles import ALL_ROLES, roles_required

bp = Blueprint("send", __name__)

FORM_PAGE = "send/page.html"
FORM_FRAGMENT = "customers/_send_form.html"
RECENT = 5


@dataclass
class SendFormState:
    """Everything the form fragment shows."""
    key: str
    mailboxes: list[Mailbox] = field(default_factory=list)
    mailbox_id: int | None = None
    cc: str = ""
    subject: str = ""
    body: str = ""
    problems: list[checks.Problem] = field(default_factory=list)  # the whole form's
    field_problems: dict[str, list[checks.Problem]] = field(default_factory=dict)
    notices: list[checks.Problem] = field(default_factory=list)  # Problematic accounts, before sending
    sent: OutgoingEmail | None = None
    repeated: bool = False  # the same form submitted again: nothing new was sent
    recent: list[OutgoingEmail] = field(default_factory=list)
    can_compose: bool = False
    denied: bool = False  # may not see Activities: nothing of the customer is shown
    max_attachment_text: str = ""


def form_state(customer: Customer, *, draft: checks.Draft | None = None, key: str | None = None,
               problems: list[checks.Problem] | None = None, sent: OutgoingEmail | None = None,
               repeated: bool = False) -> SendFormState:
    user = current_user
    state = SendFormState(key=key or new_key(),
                          max_attachment_text=checks.megabytes(checks.max_attachment_bytes()))
    standing = checks.standing_problems(user, customer, accounts_url=url_for("mailboxes.mine"))
    if any(p.code == "activities_not_permitted" for p in standing + (problems or [])):
        state.problems = [checks.activities_not_permitted()]
        state.denied = True
        return state  # nothing else of this customer is shown to them
    state.mailboxes = checks.connected_mailboxes(user)
    accounts_url = url_for("mailboxes.mine")
    usable = [m for m in state.mailboxes if checks.mailbox_problem(m, accounts_url=accounts_url) is None]
    choices = usable or state.mailboxes
    state.mailbox_id = choices[0].id if choices else None
    if draft is not None:
        state.mailbox_id = draft.mailbox_id if draft.mailbox_id is not None else state.mailbox_id
        state.cc = draft.cc if isinstance(draft.cc, str) else ", ".join(draft.cc)
        state.subject, state.body = draft.subject, draft.body
    shown = list(problems or [])
    for problem in standing:
        if problem.code not in {p.code for p in shown}:
            shown.append(problem)
    for problem in shown:
        if problem.field:
            state.field_problems.setdefault(problem.field, []).append(problem)
        else:
            state.problems.append(problem)
    if "mailbox_id" not in state.field_problems:
        state.notices = [p for p in (checks.mailbox_problem(m, accounts_url=accounts_url) for m in state.mailboxes) if p is not None]
    state.can_compose = bool(state.mailboxes) and customer.primary_email is not None
    state.sent, state.repeated = sent, repeated
    state.recent = list(db.session.scalars(
        select(OutgoingEmail).where(OutgoingEmail.customer_id == customer.id)
        .order_by(OutgoingEmail.id.desc()).limit(RECENT)))
    return state


def send_form_state(customer: Customer) -> SendFormState:
    return form_state(customer)


def outgoing_for_email(email_id: int) -> OutgoingEmail | None:
    """For the Activities list: the send state of an email sent from the CRM, else None."""
    return db.session.scalar(select(OutgoingEmail).where(OutgoingEmail.email_id == email_id)
                             .order_by(OutgoingEmail.id).limit(1))


def outgoing_reason_words(reason: str | None) -> str:
    return deliver.reason_words(reason)


def _render(customer: Customer, state: SendFormState, status: int = 200):
    # htmx swaps only 2xx answers: the fragment with its messages comes back as 200.
    if htmx and not htmx.boosted:
        status = 200
    customer_url = None
    if "customers.detail" in current_app.view_functions:
        customer_url = url_for("customers.detail", external_id=customer.external_id)
    response = page_or_fragment(FORM_PAGE, FORM_FRAGMENT, status, customer=customer, send=state,
                                customer_url=customer_url)
    if state.sent is not None:
        # Other parts of the page (the Activities timeline) may listen and refresh.
        response.headers["HX-Trigger"] = "eis:email-sent"
    return response


@bp.get("/customers/<path:external_id>/emails/new")
@roles_required(*ALL_ROLES)
def form(external_id: str):
    customer = customer_or_404(external_id)
    state = form_state(customer)
    return _render(customer, state, 403 if state.denied else 200)


@bp.post("/customers/<path:external_id>/emails")
@roles_required(*ALL_ROLES)
def send_email(external_id: str):
    customer = customer_or_404(external_id)
    form = request.form
    key = (form.get("idempotency_key") or "").strip()[:MAX_KEY_LENGTH] or None
    draft = checks.Draft(
        mailbox_id=_int_or_none(form.get("mailbox_id")), subject=form.get("subject", ""),
        body=form.get("body", ""), cc=form.get("cc", ""), attachments=_uploads(),
    )
    try:
        outgoing, created = accept(current_user, customer, draft, key, accounts_url=url_for("mailboxes.mine"))
    except checks.SendRefused as exc:
        state = form_state(customer, draft=draft, key=key, problems=exc.problems)
        return _render(customer, state, exc.problems[0].status)
    # A fresh form (new key) for the next email, with this one's state.
    return _render(customer, form_state(customer, sent=outgoing, repeated=not created))


@bp.errorhandler(RequestEntityTooLarge)
def too_large(exc):
    """Past the whole request's size limit: the form again with the attachment message."""
    external_id = (request.view_args or {}).get("external_id")
    customer = crm.get_customer(external_id) if external_id else None
    if customer is None or not current_user.is_authenticated:
        return exc
    limit = min(checks.max_attachment_bytes(), current_app.config.get("MAX_CONTENT_LENGTH") or 10**12)
    state = form_state(customer, problems=[checks.attachment_too_large(None, limit)])
    return _render(customer, state, 413)


@bp.get("/outgoing-emails/<int:outgoing_id>")
@roles_required(*ALL_ROLES)
def outgoing_state(outgoing_id: int):
    """One email's send state; polled by htmx while it is queued."""
    outgoing = db.session.get(OutgoingEmail, outgoing_id)
    if outgoing is None or not current_user.can_see_activities:
        abort(404)
    return page_or_fragment("send/outgoing.html", "send/_outgoing_state.html", outgoing=outgoing)


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return 0  # no mailbox has id 0: "not one of yours"


def _uploads() -> list[checks.Attachment]:
    found = []
    for upload in request.files.getlist("attachments"):
        if not upload or not upload.filename:
            continue  # the empty part a browser sends when no file is chosen
        data = upload.read()
        filename = compose.clean_filename(upload.filename)
        found.append(checks.Attachment(filename, compose.content_type_of(filename, upload.mimetype), data))
    return found
