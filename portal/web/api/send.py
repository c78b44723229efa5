"""Sending email to a customer: POST /customers/{external_id}/emails, and its state."""
import base64
import binascii

from flask import g, request, url_for

from portal import crm
from portal.extensions import db
from portal.models import Customer, OutgoingEmail
from portal.sending import checks, compose, deliver
from portal.sending.accept import MAX_KEY_LENGTH, accept
from portal.timeutil import isoformat
from portal.web.api.blueprint import bp
from portal.web.api.errors import ApiError
from portal.web.api.validation import check_fields, json_body


def outgoing_json(outgoing: OutgoingEmail) -> dict:
    customer = db.session.get(Customer, outgoing.customer_id)
    return {
        "id": outgoing.id,
        "state": outgoing.state,
        "reason": outgoing.reason,
        "reason_text": deliver.reason_words(outgoing.reason) or None,
        "detail": outgoing.detail,
        "message_id": outgoing.message_id,
        "mailbox_id": outgoing.mailbox_id,
        "customer": customer.external_id if customer else None,
        "email_id": outgoing.email_id,
        "subject": outgoing.subject,
        "cc": list(outgoing.cc or []),
        "attachments": list(outgoing.attachments or []),
        "attempts": outgoing.attempts,
        "idempotency_key": outgoing.idempotency_key.split(":", 1)[1],
        "created_at": isoformat(outgoing.created_at),
        "sent_at": isoformat(outgoing.sent_at),
    }


@bp.post("/customers/<path:external>/emails")
def send_email(external: str):
    user = g.api_user
    if not user.can_see_activities:
        _refuse(checks.activities_not_permitted())
    data = json_body()
    check_fields(data, required=set(),
                 optional={"mailbox_id", "subject", "body", "cc", "idempotency_key", "attachments"})
    key = _idempotency_key(data)
    customer = crm.get_customer(external)
    if customer is None:
        raise ApiError(404, "not_found", f"No customer with external id {external!r}.")
    draft = checks.Draft(
        mailbox_id=_mailbox_id(data), subject=_text(data, "subject"), body=_text(data, "body"),
        cc=_cc(data), attachments=_attachments(data),
    )
    try:
        outgoing, created = accept(user, customer, draft, key, accounts_url=url_for("mailboxes.mine"))
    except checks.SendRefused as exc:
        _refuse(exc.problems[0])
    return outgoing_json(outgoing), 202 if created else 200


@bp.get("/outgoing-emails/<int:outgoing_id>")
def get_outgoing_email(outgoing_id: int):
    # As visible as the activity it is logged as: to whoever may see the Activities tab.
    outgoing = db.session.get(OutgoingEmail, outgoing_id)
    if outgoing is None or not g.api_user.can_see_activities:
        raise ApiError(404, "not_found", f"No outgoing email {outgoing_id} that you may see.")
    return outgoing_json(outgoing)


def _refuse(problem: checks.Problem):
    extra = dict(problem.extra)
    if problem.field:
        extra.setdefault("field", problem.field)
    raise ApiError(problem.status, problem.code, problem.message, **extra)


def _idempotency_key(data: dict) -> str | None:
    key = data.get("idempotency_key")
    if key is None:
        key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not isinstance(key, str) or not key.strip() or len(key.strip()) > MAX_KEY_LENGTH \
            or not key.strip().isprintable():
        raise ApiError(422, "invalid_field",
                       f"The idempotency key must be 1 to {MAX_KEY_LENGTH} printable characters.",
                       field="idempotency_key")
    return key.strip()


def _mailbox_id(data: dict) -> int | None:
    value = data.get("mailbox_id")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(422, "invalid_field", "'mailbox_id' must be the id (a whole number) of one of your mailboxes.",
                       field="mailbox_id")
    return value


def _text(data: dict, field: str) -> str:
    value = data.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ApiError(422, "invalid_field", f"'{field}' must be a string.", field=field)
    return value


def _cc(data: dict):
    value = data.get("cc")
    if value is None:
        return ""
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return value
    raise ApiError(422, "invalid_field", "'cc' must be a list of addresses (or one comma-separated string).",
                   field="cc")


def _attachments(data: dict) -> list[checks.Attachment]:
    value = data.get("attachments")
    if value is None:
        return []
    if not isinstance(value, list):
        raise ApiError(422, "invalid_field", "'attachments' must be a list.", field="attachments")
    found = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not {"filename", "content_base64"} <= set(item) \
                or not set(item) <= {"filename", "content_type", "content_base64"} \
                or not all(isinstance(v, str) for v in item.values()):
            raise ApiError(422, "invalid_field",
                           f"attachments[{i}] must be an object with 'filename', 'content_base64' "
                           "and optionally 'content_type' (strings).", field=f"attachments[{i}]")
        try:
            content = base64.b64decode(item["content_base64"], validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, "invalid_field", f"attachments[{i}].content_base64 is not valid base64.",
                           field=f"attachments[{i}]") from None
        filename = compose.clean_filename(item["filename"])
        found.append(checks.Attachment(filename, compose.content_type_of(filename, item.get("content_type")),
                                        content))
    return found
