"""Who is using the portal: users.last_seen_at, cheaply."""
from datetime import timedelta

from sqlalchemy import update

from portal.extensions import db
from portal.models import User
from portal.timeutil import utcnow

SEEN_EVERY = timedelta(minutes=1)  # at most one write a minute per user


def note_seen(user: User) -> None:
    now = utcnow()
    if user.last_seen_at is not None and now - user.last_seen_at < SEEN_EVERY:
        return
    db.session.execute(update(User).where(User.id == user.id).values(last_seen_at=now))
    db.session.commit()
    user.last_seen_at = now
