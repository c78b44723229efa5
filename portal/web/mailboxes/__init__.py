"""A user's own email accounts: connect, watch them sync, sync now, reconnect, delete."""
from flask import Blueprint, g
from flask_login import current_user
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from portal.extensions import db
from portal.models import Mailbox
from portal.web.mailboxes import present

bp = Blueprint("mailboxes", __name__)
present.register(bp)


def problem_mailboxes() -> list[tuple[int, str]]:
    """(id, address) of the signed-in user's Problematic mailboxes, one query per request."""
    if "eis_problem_mailboxes" not in g:
        rows: list[tuple[int, str]] = []
        if current_user and current_user.is_authenticated:
            try:
                rows = [tuple(r) for r in db.session.execute(
                    select(Mailbox.id, Mailbox.address)
                    .where(Mailbox.user_id == current_user.id, Mailbox.state == "problematic")
                    .order_by(Mailbox.id)).all()]
            except SQLAlchemyError:  # an error page must still render when the database is down
                db.session.rollback()
        g.eis_problem_mailboxes = rows
    return g.eis_problem_mailboxes


@bp.app_context_processor
def _banner_context():
    return {"problem_mailboxes": problem_mailboxes}


from portal.web.mailboxes import views  # noqa: E402,F401
