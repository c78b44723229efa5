"""The CRM side's data: customers with their primary address history, and deals.

History rules (DESIGN rule 5): a customer's first primary address has no lower bound;
a change closes the current entry at the moment the new address became primary and
opens a new entry from that moment. Nothing is ever deleted from the history.
"""
from datetime import datetime

from sqlalchemy import select

from portal.extensions import db
from portal.models import (
    Customer,
    CustomerContactEmail,
    CustomerPrimaryEmail,
    Deal,
    DealCustomer,
    User,
)
from portal.timeutil import utcnow


class CrmError(ValueError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def get_customer(external_id: str) -> Customer | None:
    return db.session.scalar(select(Customer).where(Customer.external_id == external_id))


def upsert_customer(external_id: str, *, name: str, primary_email: str | None,
                    primary_email_since: datetime | None = None,
                    additional_emails: list[str] | None = None) -> tuple[Customer, bool]:
    """Create or update a customer; the caller commits. Addresses are already normalised."""
    customer = get_customer(external_id)
    created = customer is None
    if created:
        customer = Customer(external_id=external_id, name=name)
        db.session.add(customer)
    customer.name = name
    set_primary_email(customer, primary_email, primary_email_since)
    if additional_emails is not None:
        wanted = list(dict.fromkeys(additional_emails))
        customer.contact_emails = [CustomerContactEmail(address=a) for a in wanted]
    return customer, created


def set_primary_email(customer: Customer, address: str | None, since: datetime | None) -> None:
    current = customer.current_primary
    if (current.address if current else None) == address:
        return
    moment = since or utcnow()
    if current is not None:
        if current.since is not None and moment < current.since:
            raise CrmError(
                "invalid_primary_email_since",
                f"primary_email_since ({moment.isoformat()}Z) is before the current address "
                f"became primary ({current.since.isoformat()}Z).",
            )
        current.until = moment
    if address is None:
        return
    first = not customer.primary_emails
    customer.primary_emails.append(
        CustomerPrimaryEmail(address=address, since=None if first else moment, until=None)
    )


def upsert_deal(external_id: str, *, name: str, owner_email: str | None,
                members: list[tuple[str, str]]) -> tuple[Deal, bool]:
    """members: (customer external id, role). Refuses unknown customers and owners."""
    customers = {}
    for customer_external_id, _role in members:
        customer = get_customer(customer_external_id)
        if customer is None:
            raise CrmError("unknown_customer", f"No customer with external id {customer_external_id!r}; "
                                               "PUT it to /customers first.")
        customers[customer_external_id] = customer
    owner = None
    if owner_email:
        owner = db.session.scalar(select(User).where(User.email == owner_email))
        if owner is None:
            raise CrmError("unknown_user", f"No user with email {owner_email!r}.")
    deal = db.session.scalar(select(Deal).where(Deal.external_id == external_id))
    created = deal is None
    if created:
        deal = Deal(external_id=external_id, name=name)
        db.session.add(deal)
    deal.name = name
    deal.owner = owner
    # Update memberships in place: replacing the list would insert before it deletes and
    # trip the (deal, customer) unique constraint.
    existing = {m.customer_id: m for m in deal.members}
    wanted = {customers[ext].id: role for ext, role in members}
    for customer_id, member in existing.items():
        if customer_id not in wanted:
            deal.members.remove(member)
    for ext, role in members:
        member = existing.get(customers[ext].id)
        if member is None:
            deal.members.append(DealCustomer(customer=customers[ext], role=role))
        else:
            member.role = role
    return deal, created
