"""Taking an address out of the connected-mailbox registry: an admin's correction when an
address was connected by someone who does not own it.

Every address ever connected counts as internal (DESIGN rule 6): email involving it is not
logged for anybody. Releasing an address ends that. Its connections that are still live are
disconnected (credentials wiped, as a delete does); email already logged stays; from then on
email involving the address is logged again, and its real owner may connect it.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import joinedload

from portal.accounts import linking
from portal.extensions import db
from portal.models import Mailbox, User
from portal.models.audit import record
from portal.models.mailboxes import DISCONNECTED
from portal.timeutil import utcnow


@dataclass(frozen=True)
class Released:
    address: str
    mailboxes: int  # rows of the registry released
    disconnected: int  # of which were still connected

    def sentence(self) -> str:
        words = f"{self.address} is no longer a connected mailbox: email involving it is logged on customers again."
        if self.disconnected:
            words += f" {self.disconnected} live connection{'s were' if self.disconnected != 1 else ' was'} disconnected."
        return words


def registry_rows(address: str) -> list[Mailbox]:
    """Every mailbox row with this address that still counts as internal."""
    return db.session.scalars(
        select(Mailbox).options(joinedload(Mailbox.owner))
        .where(Mailbox.address == address, Mailbox.released_at.is_(None)).order_by(Mailbox.id)).all()


def release_address(address: str, actor: User) -> Released | None:
    """Release `address` (lower-cased); None when it is not in the registry. The caller commits."""
    rows = registry_rows(address)
    if not rows:
        return None
    now = utcnow()
    live = [m for m in rows if m.state != DISCONNECTED]
    for mailbox in live:
        linking.disconnect(mailbox, actor)
    for mailbox in rows:
        mailbox.released_at = now
    record("address_released", actor, None, address=address, mailboxes=[m.id for m in rows],
           owners=sorted({m.owner.email for m in rows}), disconnected=[m.id for m in live])
    return Released(address=address, mailboxes=len(rows), disconnected=len(live))
