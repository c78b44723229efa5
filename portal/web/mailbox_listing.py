"""The mailbox listing support, IT and admins page through: filters from the query string,
Problematic first.

One query per page whatever the number of mailboxes: filters and the Problematic-first
order in SQL, LIMIT/OFFSET, the owner joined in; a second query counts for the pager.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import contains_eager

from portal.extensions import db
from portal.mail.errors import REFUSAL_REASONS, TRANSIENT_REASONS
from portal.models import Mailbox, User
from portal.models.mailboxes import ACTIVE, DISCONNECTED, PENDING, PROBLEMATIC, PROVIDERS, STATES
from portal.web.kit import PER_PAGE, Page, arg, paginate

# Reasons a mailbox can carry: the classified ones, plus the sync's own.
REASONS = tuple(sorted(REFUSAL_REASONS | TRANSIENT_REASONS | {"internal_error"}))
STATE_ORDER = (PROBLEMATIC, PENDING, ACTIVE, DISCONNECTED)  # what needs attention first


@dataclass
class MailboxFilters:
    state: str = ""
    reason: str = ""
    provider: str = ""
    owner: str = ""  # part of the owner's email or name
    q: str = ""  # part of the mailbox address

    @classmethod
    def from_request(cls) -> MailboxFilters:
        return cls(state=arg("state", STATES), reason=arg("reason", REASONS), provider=arg("provider", PROVIDERS),
                   owner=arg("owner").lower(), q=arg("q").lower())

    @property
    def active(self) -> bool:
        return any((self.state, self.reason, self.provider, self.owner, self.q))

    def args(self, **override) -> dict:
        values = {"state": self.state, "reason": self.reason, "provider": self.provider,
                  "owner": self.owner, "q": self.q, **override}
        return {k: v for k, v in values.items() if v}


def _filtered(statement, filters: MailboxFilters):
    if filters.state:
        statement = statement.where(Mailbox.state == filters.state)
    if filters.reason:
        statement = statement.where(Mailbox.reason == filters.reason)
    if filters.provider:
        statement = statement.where(Mailbox.provider == filters.provider)
    if filters.q:
        statement = statement.where(Mailbox.address.contains(filters.q, autoescape=True))
    if filters.owner:
        statement = statement.where(or_(func.lower(User.email).contains(filters.owner, autoescape=True),
                                        func.lower(User.name).contains(filters.owner, autoescape=True)))
    return statement


def mailbox_page(filters: MailboxFilters, page: int, per_page: int = PER_PAGE) -> Page:
    """Problematic first, then pending, active, disconnected; newest connection first within."""
    rank = case({state: index for index, state in enumerate(STATE_ORDER)}, value=Mailbox.state, else_=len(STATE_ORDER))
    statement = _filtered(
        select(Mailbox).join(User, User.id == Mailbox.user_id).options(contains_eager(Mailbox.owner)),
        filters,
    ).order_by(rank, Mailbox.id.desc())
    count = _filtered(select(func.count(Mailbox.id)).join(User, User.id == Mailbox.user_id), filters)
    return paginate(statement, count, page, per_page)


def state_counts() -> dict[str, int]:
    rows = db.session.execute(select(Mailbox.state, func.count(Mailbox.id)).group_by(Mailbox.state)).all()
    counts = {state: 0 for state in STATE_ORDER}
    counts.update({state: n for state, n in rows})
    return counts
