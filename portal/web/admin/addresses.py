"""Admin -> Addresses: the connected-mailbox registry (every address ever connected counts as
internal) and releasing an address from it, after a confirmation that says what changes."""
from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import func, select

from portal.accounts.release import registry_rows, release_address
from portal.extensions import db
from portal.models import Mailbox
from portal.web.admin.views import bp
from portal.web.kit import Page, arg, page_number
from portal.web.roles import roles_required

ADDRESSES_PER_PAGE = 50


@bp.get("/addresses")
@roles_required()
def addresses():
    q = arg("q").lower()
    where = [Mailbox.released_at.is_(None)] + ([Mailbox.address.contains(q, autoescape=True)] if q else [])
    total = db.session.scalar(select(func.count(func.distinct(Mailbox.address))).where(*where)) or 0
    page = max(1, min(page_number(), -(-total // ADDRESSES_PER_PAGE) or 1))
    rows = db.session.execute(
        select(Mailbox.address, func.count(Mailbox.id), func.min(Mailbox.connected_at)).where(*where)
        .group_by(Mailbox.address).order_by(Mailbox.address)
        .limit(ADDRESSES_PER_PAGE).offset((page - 1) * ADDRESSES_PER_PAGE)).all()
    released = db.session.execute(
        select(Mailbox.address, func.max(Mailbox.released_at)).where(Mailbox.released_at.is_not(None))
        .group_by(Mailbox.address).order_by(func.max(Mailbox.released_at).desc()).limit(20)).all()
    return render_template("admin/addresses.html", page=Page(rows, page, ADDRESSES_PER_PAGE, total), q=q,
                           released=released)


@bp.route("/addresses/release", methods=["GET", "POST"])
@roles_required()
def release():
    address = (request.values.get("address") or "").strip().lower()[:320]
    rows = registry_rows(address) if address else []
    if not rows:
        flash(f"{address or 'That address'} is not a connected mailbox address: nothing to release.", "error")
        return render_template("admin/address_release.html", address=address, rows=[]), 404
    if request.method == "POST":
        done = release_address(address, current_user)
        db.session.commit()
        flash(done.sentence(), "success")
        return redirect(url_for(".addresses"))
    return render_template("admin/address_release.html", address=address, rows=rows)
