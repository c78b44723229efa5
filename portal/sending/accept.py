"""Accepting an email to send: checked, composed once, logged on the customer at once
(Email, Activity and OutgoingEmail in one transaction) and queued for the send job. The
same idempotency key again returns the first email and sends nothing new."""
from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from portal import matching
from portal.extensions import db
from portal.mail import parse, rules
from portal.models import Customer, Mailbox, OutgoingEmail, User
from portal.queue import enqueue_send
from portal.sending.checks import Draft, SendRefused, activities_not_permitted, check
from portal.sending.compose import compose, wire_bytes
from portal.timeutil import utcnow

MAX_KEY_LENGTH = 150  # the stored key is "<user id>:<key>", in 200 characters


def stored_key(user: User, key: str) -> str:
    # Keys are the sender's own: another user's identical key is another email.
    return f"{user.id}:{key}"


def find_by_key(user: User, key: str) -> OutgoingEmail | None:
    return db.session.scalar(select(OutgoingEmail).where(OutgoingEmail.idempotency_key == stored_key(user, key)))


def new_key() -> str:
    return uuid.uuid4().hex


def accept(user: User, customer: Customer, draft: Draft, key: str | None = None, *,
           accounts_url: str) -> tuple[OutgoingEmail, bool]:
    """Check, compose, log and queue one email. Returns (outgoing, created); the same key
    again returns the first one (created False) and sends nothing new.
    Raises SendRefused with every failed precondition; then nothing is written or sent."""
    key = key or new_key()
    if not user.can_see_activities:
        raise SendRefused([activities_not_permitted()])
    existing = find_by_key(user, key)
    if existing is not None:
        _requeue_if_lost(existing)
        return existing, False
    checked = check(user, customer, draft, accounts_url=accounts_url)
    if checked.problems:
        raise SendRefused(checked.problems)
    mailbox = checked.mailbox
    msg = compose(from_name=user.name or "", from_address=mailbox.address, to_name=customer.name,
                  to_address=customer.primary_email, cc=checked.cc, subject=checked.subject, body=draft.body,
                  attachments=draft.attachments)
    raw = wire_bytes(msg)  # read back first: SendRefused if a header came out that was not written
    parsed = parse.parse_message(raw)
    now = utcnow()
    email = matching.new_email(parsed, raw, key=parse.dedupe_key(parsed, raw), internal_date=now,
                               from_addr=mailbox.address)
    matching.log_on_customers(email, _matches(parsed, mailbox, customer, now), mailbox.id)
    outgoing = OutgoingEmail(
        idempotency_key=stored_key(user, key), user_id=user.id, mailbox_id=mailbox.id, customer_id=customer.id,
        message_id=parsed.message_id, subject=checked.subject, body=draft.body,
        cc=[address for _, address in checked.cc],
        attachments=[{"filename": a.filename, "content_type": a.content_type, "size": len(a.data)}
                     for a in draft.attachments],
        state="queued", attempts=0, created_at=now,
    )
    try:
        db.session.flush()
        outgoing.email_id = email.id
        db.session.add(outgoing)
        db.session.commit()
    except IntegrityError:
        # The same key at the same moment (a double click that beat the first commit).
        db.session.rollback()
        existing = find_by_key(user, key)
        if existing is None:
            raise
        return existing, False
    enqueue_send(outgoing.id)
    return outgoing, True


def _requeue_if_lost(outgoing: OutgoingEmail) -> None:
    """A queued email whose job is gone (Redis lost it, or enqueueing failed) is queued again;
    a live job with its id makes this a no-op."""
    if outgoing.state == "queued":
        enqueue_send(outgoing.id)


def _matches(parsed: parse.ParsedMessage, mailbox: Mailbox, customer: Customer, now: datetime) -> list[rules.Match]:
    """The customers the rules log this email on (an additional customer of the deal in
    copy too), always including the addressee."""
    primaries, deals = matching.crm_facts_for(parsed.all_addresses())
    facts = rules.MessageFacts(
        from_=tuple(a.address for a in parsed.from_), to=tuple(a.address for a in parsed.to),
        cc=tuple(a.address for a in parsed.cc), when=now, flags=frozenset({"\\Seen"}),
        folder_special_use="\\Sent")
    decision = rules.decide(facts, mailbox_address=mailbox.address,
                            internal_addresses=matching.internal_addresses(),
                            primary_addresses=primaries, deals=deals)
    matches = list(decision.matches)
    if customer.id not in {m.customer_id for m in matches}:
        # Sent from the CRM to this customer: logged on them even where the sync would not
        # log it (a colleague's mailbox in Cc makes it internal).
        matches.insert(0, rules.Match(customer_id=customer.id, field="to", address=customer.primary_email,
                                      direction="out", deal_id=None))
    return matches
