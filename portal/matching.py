"""What the rules need to know, read from the database, and what they produce, stored.

The sync, sending and support's why-check all decide with portal.mail.rules; the facts come
from here (the addresses of connected mailboxes, a customer's primary address history and
deals), and so do the stored emails and their activities on customers: one Email row per
email, however many mailboxes, folders and customers it reaches.
"""
from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import String, any_, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY

from portal.extensions import db
from portal.mail import parse, rawstore, rules
from portal.mail.imap import Folder, HeaderRecord
from portal.models import Activity, CustomerPrimaryEmail, DealCustomer, Email, Mailbox
from portal.webhooks.activities import activities_logged


def internal_addresses() -> frozenset[str]:
    """Every mailbox address ever connected, by anyone, in any state (DESIGN rule 6), except
    the ones an admin released (connected by someone who does not own them)."""
    return frozenset(db.session.scalars(
        select(Mailbox.address).where(Mailbox.released_at.is_(None)).distinct()).all())


def clip(value: str | None, length: int) -> str | None:
    """Values longer than their column (a 600-character display name is real mail) are cut,
    not refused: PostgreSQL would fail the whole batch on them."""
    return value[:length] if value and len(value) > length else value


def message_facts(headers: parse.ParsedHeaders, record: HeaderRecord, folder: Folder) -> rules.MessageFacts:
    """The facts the rules decide a message on (the sync and the why-check build them here)."""
    return rules.MessageFacts(
        from_=tuple(a.address for a in headers.from_), to=tuple(a.address for a in headers.to),
        cc=tuple(a.address for a in headers.cc), when=record.internal_date, flags=record.flags,
        folder_special_use=folder.special_use,
    )


def owner_addresses(mailbox: Mailbox) -> frozenset[str]:
    """The addresses of every mailbox of this mailbox's owner, whatever its state (itself
    included): an email from any of them is "out" (rules.message_direction)."""
    return frozenset(db.session.scalars(select(Mailbox.address).where(
        Mailbox.user_id == mailbox.user_id, Mailbox.released_at.is_(None))).all()) | {mailbox.address}


def crm_facts_for(addresses: set[str]) -> tuple[list[rules.PrimaryAddress], list[rules.DealMembership]]:
    """Primary address history entries and deal memberships for these addresses: what the
    rules compare a message with (the sync and the support page's why-check both use it)."""
    if not addresses:
        return [], []
    rows = db.session.execute(
        select(CustomerPrimaryEmail.customer_id, CustomerPrimaryEmail.address,
               CustomerPrimaryEmail.since, CustomerPrimaryEmail.until)
        .where(one_of(CustomerPrimaryEmail.address, sorted(addresses)))
    ).all()
    primaries = [rules.PrimaryAddress(customer_id=r[0], address=r[1], since=r[2], until=r[3]) for r in rows]
    customer_ids = {p.customer_id for p in primaries}
    deals = []
    if customer_ids:
        deals = [rules.DealMembership(deal_id=d, customer_id=c, role=role) for d, c, role in db.session.execute(
            select(DealCustomer.deal_id, DealCustomer.customer_id, DealCustomer.role)
            .where(DealCustomer.customer_id.in_(sorted(customer_ids)))).all()]
    return primaries, deals


def dialect() -> str:
    return db.session.get_bind().dialect.name


def one_of(column, values: list[str]):
    """`column IN (values)` with the values in one bound parameter, not one each: a
    back-fill batch looks up about a thousand addresses, and expanding a thousand bind
    parameters cost SQLAlchemy more than the database's lookups (bench/sync.py)."""
    name = dialect()
    if name == "sqlite":
        listed = func.json_each(json.dumps(values)).table_valued("value")
        return column.in_(select(listed.c.value))
    if name == "postgresql":
        return column == any_(bindparam("values", values, type_=ARRAY(String)))
    return column.in_(values)


def outside_window(mailbox: Mailbox, record: HeaderRecord) -> bool:
    """True when the sync skips the message as older than the mailbox's back-fill window."""
    return mailbox.backfill_since is not None and record.internal_date < mailbox.backfill_since


def new_email(parsed: parse.ParsedMessage, raw: bytes, *, key: str, internal_date: datetime,
              from_addr: str | None = None) -> Email:
    """The stored email (added to the session): its headers as parsed, the body, the raw
    message compressed. `from_addr`: the sender as the CRM knows it (a sent email's mailbox)."""
    first_from = parsed.from_[0] if parsed.from_ else None
    email = Email(
        dedupe_key=key, message_id=clip(parsed.message_id, 998), subject=parsed.subject,
        from_addr=clip(from_addr or (first_from.address if first_from else None), 320),
        from_name=clip(first_from.name, 500) if first_from else None,
        to_addrs=[{"name": a.name, "address": a.address} for a in parsed.to],
        cc_addrs=[{"name": a.name, "address": a.address} for a in parsed.cc],
        date=parsed.date, internal_date=internal_date,
        text_body=parsed.text_body, html_body=parsed.html_body, attachments=parsed.attachments,
        raw_packed=rawstore.pack(raw), size=len(raw), parse_defects=parsed.defects or None,
    )
    db.session.add(email)
    return email


def log_on_customers(email: Email, matches: tuple[rules.Match, ...] | list[rules.Match], mailbox_id: int) -> int:
    """An activity on each matched customer the email is not on yet (DESIGN rule 4); the
    number added."""
    have = {a.customer_id for a in email.activities}  # in memory for an email new in this batch
    added = 0
    for match in matches:
        if match.customer_id in have:
            continue
        email.activities.append(Activity(
            customer_id=match.customer_id, mailbox_id=mailbox_id, direction=match.direction,
            matched_field=match.field, matched_address=match.address, deal_id=match.deal_id,
            email_date=email.date or email.internal_date,
        ))
        have.add(match.customer_id)
        added += 1
    activities_logged(email.activities[len(email.activities) - added:], mailbox_id)  # the CRM's webhooks
    return added
