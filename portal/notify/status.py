"""Whether notifications go out, in words for the admin's health page: the settings, and
the last one sent or refused (a refused system account fails every email until it is fixed)."""
from __future__ import annotations

from sqlalchemy import select

from portal.extensions import db
from portal.models import Notification
from portal.models.notifications import FAILED, SENT
from portal.notify import config


def health_words() -> tuple[str, bool]:
    """(words after the setting's name, whether they are a warning)."""
    words = config.summary()
    if not config.enabled():
        return words, True
    last = db.session.scalar(select(Notification).where(Notification.status.in_((SENT, FAILED)))
                             .order_by(Notification.id.desc()).limit(1))
    if last is not None and last.status == FAILED:
        return f"{words} The last one could not be sent: {last.detail}", True
    return words, False
