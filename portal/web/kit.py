"""What every page area shares: page or fragment (htmx), paging, reading ids and numbers from
URLs and query strings, and the lookups that answer 404. One helper per lookup."""
from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from flask import abort, make_response, render_template, request

from portal import crm
from portal.extensions import db, htmx
from portal.models import Customer
from portal.web.guards import MAX_ID as MAX_ID  # the views that check ids take it from here

PER_PAGE = 50


def page_or_fragment(page: str, fragment: str, status: int = 200, **context):
    """One helper decides page or fragment (STYLE.md): htmx requests that are not boosted get
    the fragment, everything else the whole page, and so does a history restore (Back after
    htmx pushed a filtered URL), which is what htmx swaps in then. Responses vary on HX-Request."""
    wants_fragment = bool(htmx) and not htmx.boosted and not htmx.history_restore_request
    response = make_response(render_template(fragment if wants_fragment else page, **context), status)
    response.headers["Vary"] = "HX-Request"
    return response


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


def int_arg(name: str, default: int, low: int, high: int) -> int:
    """A number from the query string for a page, held within [low, high]; the default for
    anything unusable (bad input never errors on a page)."""
    try:
        value = int(request.args.get(name, default))
    except (TypeError, ValueError):
        return default
    return min(max(value, low), high)


def customer_or_404(external_id: str) -> Customer:
    customer = crm.get_customer(external_id)
    if customer is None:
        abort(404, description=f"No customer with external id {external_id!r}.")
    return customer
