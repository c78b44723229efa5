"""The mailbox listing support, IT and admins page through, and the small helpers their
pages share (paging, reading filters from the query string, times for people).

One query per page whatever the number of mailboxes: filters and the Problematic-first
order in SQL, LIMIT/OFFSET, the owner joined in; a second query counts for the pager.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from flask import abort, request
from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import contains_eager

from portal.extensions import db, htmx
from portal.mail.errors import REFUSAL_REASONS, TRANSIENT_REASONS
from portal.models import Mailbox, User
from portal.models.mailboxes import PROVIDERS, STATES

PER_PAGE = 50
MAX_ID = 2**31 - 1  # ids are 32-bit integers; a larger one in a URL is simply not found
# Reasons a mailbox can carry: the classified ones, plus the sync's own.
REASONS = tuple(sorted(REFUSAL_REASONS | TRANSIENT_REASONS | {"internal_error"}))
STATE_ORDER = ("problematic", "pending", "active", "disconnected")  # what needs attention first


@dataclass
class Page:
    items: list
    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, ceil(self.total / self.per_page))

    @property
    def first_index(self) -> int:
        return (self.page - 1) * self.per_page + 1 if self.total else 0

    @property
    def last_index(self) -> int:
        return min(self.total, self.page * self.per_page)


def get_or_404(model, object_id: int):
    """db.get_or_404, and a 404 for ids no row can have (SQLite overflows on them)."""
    if not 0 < object_id <= MAX_ID:
        abort(404)
    return db.get_or_404(model, object_id)


def whole_number(text: str | None, low: int = 1, high: int = MAX_ID) -> int | None:
    """An integer typed by someone, within [low, high]; None for anything else ('²', '1e9', 10**5000)."""
    if not text or not text.isascii() or not text.isdigit() or len(text) > 12:
        return None
    value = int(text)
    return value if low <= value <= high else None


def page_number(param: str = "page") -> int:
    """?page=N, anything unusable read as 1 (bad input never errors)."""
    return whole_number(request.args.get(param), 1, 10**6) or 1


def arg(name: str, allowed: tuple[str, ...] | None = None, max_length: int = 200) -> str:
    """A filter from the query string, stripped; '' when absent or not one of `allowed`."""
    value = (request.args.get(name) or "").strip()[:max_length]
    if allowed is not None and value not in allowed:
        return ""
    return value


def paginate(statement, count_statement, page: int, per_page: int = PER_PAGE) -> Page:
    total = db.session.scalar(count_statement) or 0
    last = max(1, ceil(total / per_page))
    page = min(page, last)
    items = db.session.execute(statement.limit(per_page).offset((page - 1) * per_page)).unique().scalars().all()
    return Page(items=items, page=page, per_page=per_page, total=total)


def ops_page(page_template: str, fragment_template: str, /, **context):
    """page_or_fragment, but a history restore (Back after htmx pushed a filtered URL) gets
    the whole page, which is what htmx swaps in then."""
    from portal.web.render import page_or_fragment

    restore = bool(htmx) and htmx.history_restore_request
    return page_or_fragment(page_template, page_template if restore else fragment_template, **context)


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
