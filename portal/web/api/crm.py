"""Customers, deals and their activities: what the CRM side pushes and reads."""
from flask import g
from sqlalchemy import select

from portal import crm
from portal.extensions import db
from portal.models import Activity
from portal.web.api.blueprint import bp
from portal.web.api.errors import ApiError
from portal.web.api.serialize import activity_json, customer_json, deal_json
from portal.web.api.validation import (
    address,
    check_fields,
    external_id,
    header_string,
    json_body,
    number_arg,
    string,
    timestamp,
)
from portal.web.kit import customer_or_404

CRM_WRITERS = ("admin", "it")


def require_role(*roles: str) -> None:
    if g.api_user.role not in roles:
        raise ApiError(403, "forbidden", f"This call needs one of the roles: {', '.join(roles)}.")


def require_activities_permission() -> None:
    """Customer reads need the Activities permission, as the customer pages do."""
    if not g.api_user.can_see_activities:
        raise ApiError(403, "activities_not_permitted",
                       "Your account may not see the Activities tab; ask an administrator.")


@bp.put("/customers/<path:external>")
def put_customer(external: str):
    require_role(*CRM_WRITERS)
    external = external_id(external)
    data = json_body()
    check_fields(data, required={"name"}, optional={"primary_email", "primary_email_since", "additional_emails"})
    name = header_string(data, "name")  # the To's display name of every email sent to them
    primary = data.get("primary_email")
    primary = None if primary in (None, "") else address(primary, "primary_email")
    since = None
    if data.get("primary_email_since") is not None:
        since = timestamp(data["primary_email_since"], "primary_email_since")
    additional = data.get("additional_emails")
    if additional is not None:
        if not isinstance(additional, list):
            raise ApiError(422, "invalid_field", "'additional_emails' must be a list of addresses.",
                           field="additional_emails")
        additional = [address(a, f"additional_emails[{i}]") for i, a in enumerate(additional)]
    try:
        customer, created = crm.upsert_customer(
            external, name=name, primary_email=primary, primary_email_since=since,
            additional_emails=additional,
        )
        db.session.commit()
    except crm.CrmError as exc:
        raise ApiError(422, exc.code, str(exc)) from None
    return customer_json(customer), 201 if created else 200


@bp.get("/customers/<path:external>")
def get_customer(external: str):
    require_activities_permission()
    customer = customer_or_404(external)
    return customer_json(customer)


@bp.put("/deals/<path:external>")
def put_deal(external: str):
    require_role(*CRM_WRITERS)
    external = external_id(external)
    data = json_body()
    check_fields(data, required={"name", "customers"}, optional={"owner_email"})
    name = header_string(data, "name")  # refused alike: a name shown with the customer's emails
    owner = data.get("owner_email")
    owner = None if owner in (None, "") else address(owner, "owner_email")
    members = data["customers"]
    if not isinstance(members, list):
        raise ApiError(422, "invalid_field", "'customers' must be a list.", field="customers")
    parsed = []
    for i, member in enumerate(members):
        if not isinstance(member, dict) or set(member) != {"external_id", "role"}:
            raise ApiError(422, "invalid_field",
                           f"customers[{i}] must be an object with exactly 'external_id' and 'role'.",
                           field=f"customers[{i}]")
        if member["role"] not in ("primary", "additional"):
            raise ApiError(422, "invalid_field", f"customers[{i}].role must be 'primary' or 'additional'.",
                           field=f"customers[{i}].role")
        parsed.append((string(member, "external_id", max_length=200), member["role"]))
    if len({ext for ext, _ in parsed}) != len(parsed):
        raise ApiError(422, "invalid_field", "A customer is listed twice on the deal.", field="customers")
    if sum(1 for _, role in parsed if role == "primary") > 1:
        raise ApiError(422, "invalid_field", "A deal has at most one primary customer.", field="customers")
    try:
        deal, created = crm.upsert_deal(external, name=name, owner_email=owner, members=parsed)
        db.session.commit()
    except crm.CrmError as exc:
        raise ApiError(422, exc.code, str(exc)) from None
    return deal_json(deal), 201 if created else 200


@bp.get("/customers/<path:external>/activities")
def customer_activities(external: str):
    user = g.api_user
    require_activities_permission()
    customer = customer_or_404(external)
    limit = number_arg("limit", 50, 1, 200)
    offset = number_arg("offset", 0, 0, 10**9)
    rows = db.session.scalars(
        select(Activity).where(Activity.customer_id == customer.id)
        .order_by(Activity.email_date.desc().nulls_last(), Activity.id.desc())
        .limit(limit).offset(offset)
    ).all()
    return {
        "customer": customer.external_id,
        "activities": [activity_json(a, with_body=user.can_see_emails) for a in rows],
        "limit": limit, "offset": offset,
    }
