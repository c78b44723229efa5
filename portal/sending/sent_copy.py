"""The copy of a sent email in the mailbox's Sent folder (generic IMAP servers; Microsoft and
Google keep one themselves). When the sync meets it later, its Message-ID finds the stored
email: no duplicate. The email is sent whatever happens here: a failed copy is noted on it."""
from __future__ import annotations

import logging
from datetime import datetime, timezone

from portal.accounts.sessions import open_imap
from portal.extensions import db
from portal.mail.errors import classify_exception, is_mail_fault
from portal.models import Mailbox, OutgoingEmail

log = logging.getLogger(__name__)


def sent_folder_name(folders) -> str:
    """The folder with special use \\Sent; else one named like it; else "Sent"."""
    for folder in folders:
        if folder.special_use == "\\Sent" and folder.selectable:
            return folder.name
    names = {f.name.lower(): f.name for f in folders if f.selectable}
    for candidate in ("sent", "sent items", "sent messages", "sent mail", "odeslaná pošta", "odeslané"):
        if candidate in names:
            return names[candidate]
    return "Sent"


def save_sent_copy(mailbox: Mailbox, raw: bytes) -> str:
    """APPEND the sent message to the mailbox's Sent folder, marked \\Seen; returns the folder."""
    with open_imap(mailbox) as session:
        folder = sent_folder_name(session.list_folders())
        session.append(folder, raw, flags=("\\Seen",), when=datetime.now(timezone.utc), create=True)
        return folder


def save_sent_copy_recorded(outgoing_id: int, mailbox: Mailbox, raw: bytes) -> None:
    """The email is sent whatever happens here: a failed copy is noted on it, not retried
    (a retry would send it again)."""
    try:
        save_sent_copy(mailbox, raw)
    except Exception as exc:
        if not is_mail_fault(exc):
            raise
        words = classify_exception(exc).detail
        log.warning("outgoing email %s: sent, but the copy in Sent was not saved: %s", outgoing_id, words)
        db.session.rollback()
        outgoing = db.session.get(OutgoingEmail, outgoing_id)
        note = f"Sent, but the copy could not be saved in the Sent folder: {words}"
        outgoing.detail = f"{outgoing.detail}\n{note}" if outgoing.detail else note
        db.session.commit()
