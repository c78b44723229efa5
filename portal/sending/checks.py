"""Why an email cannot be sent (DESIGN rule 10; the seed's "Why I can't send an email?"):
every precondition, each failure with its own code (for the API) and sentence (for people).
The caller passes where people connect and reconnect mailboxes: the messages link it."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from email.utils import getaddresses

from flask import current_app
from sqlalchemy import select

from portal.accounts import state
from portal.accounts.sessions import smtp_endpoint
from portal.addresses import normalise_address
from portal.extensions import db
from portal.mail import headers
from portal.mail.errors import ACCOUNTS_PAGE, plain_words
from portal.models import Customer, Mailbox, User
from portal.models.mailboxes import DISCONNECTED, PROBLEMATIC

DEFAULT_MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
MAX_SUBJECT_LENGTH = 900  # a header line may hold 998 characters
MAX_CC = 50


@dataclass
class Problem:
    """One reason the email cannot be sent: a code for machines, a sentence for people."""
    code: str
    message: str
    status: int = 422
    field: str | None = None  # the form field it belongs to; None: the whole form
    link: tuple[str, str] | None = None  # (url, label) to act on it
    extra: dict = dataclasses.field(default_factory=dict)  # more JSON fields for the API


class SendRefused(Exception):
    def __init__(self, problems: list[Problem]):
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems


@dataclass
class Attachment:
    filename: str
    content_type: str
    data: bytes


@dataclass
class Draft:
    """What the sender typed (form or API), not yet checked."""
    mailbox_id: int | None
    subject: str
    body: str
    cc: str | list[str] = ""
    attachments: list[Attachment] = dataclasses.field(default_factory=list)


@dataclass
class Checked:
    problems: list[Problem]
    mailbox: Mailbox | None = None
    subject: str = ""
    cc: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (display name, address)


def max_attachment_bytes() -> int:
    return int(current_app.config.get("EIS_SEND_MAX_ATTACHMENT_BYTES") or DEFAULT_MAX_ATTACHMENT_BYTES)


def max_body_bytes() -> int:
    return int(current_app.config.get("EIS_SEND_MAX_BODY_BYTES") or DEFAULT_MAX_BODY_BYTES)


def megabytes(size: int) -> str:
    if size < 100 * 1024:  # "0.0 MB" says nothing: small limits (tests, tight set-ups) in KB or bytes
        return f"{size} bytes" if size < 1024 else f"{size / 1024:.0f} KB"
    value = size / (1024 * 1024)
    return f"{value:.0f} MB" if value == int(value) else f"{value:.1f} MB"


def connected_mailboxes(user: User) -> list[Mailbox]:
    """The user's own mailboxes that are connected (Problematic ones too: they are shown)."""
    return list(db.session.scalars(select(Mailbox).where(
        Mailbox.user_id == user.id, Mailbox.state.in_(state.CONNECTED)).order_by(Mailbox.id)))


def activities_not_permitted() -> Problem:
    return Problem("activities_not_permitted",
                   "You may not see the Activities tab, so you cannot send email to customers. "
                   "Ask your administrator to give you the Activities permission.", 403)


def standing_problems(user: User, customer: Customer, *, accounts_url: str) -> list[Problem]:
    """What stops any email to this customer, whatever is typed: shown when the form opens."""
    if not user.can_see_activities:
        return [activities_not_permitted()]
    problems = []
    if not connected_mailboxes(user):
        problems.append(_no_mailbox(accounts_url))
    if not customer.primary_email:
        problems.append(_no_customer_email(customer))
    return problems


def mailbox_problem(mailbox: Mailbox, *, accounts_url: str) -> Problem | None:
    """Why this (own) mailbox cannot send now, or None."""
    url = accounts_url
    if mailbox.state == DISCONNECTED:
        return Problem("mailbox_disconnected",
                       f"Your email account {mailbox.address} is disconnected. Connect it again on "
                       f"{ACCOUNTS_PAGE} ({url}) to send from it.", 409, "mailbox_id",
                       link=(url, "Connect it again"), extra={"reconnect_url": url})
    if mailbox.state == PROBLEMATIC:
        return Problem("mailbox_problematic",
                       f"Your email account {mailbox.address} is Problematic, so nothing can be sent from it: "
                       f"{plain_words(mailbox.reason or 'protocol_error')} Press Reconnect beside it on "
                       f"{ACCOUNTS_PAGE} ({url}) and sign in again.",
                       409, "mailbox_id", link=(url, "Reconnect the account"),
                       extra={"reason": mailbox.reason, "reconnect_url": url})
    if smtp_endpoint(mailbox)[0] is None:
        return Problem("mailbox_cannot_send",
                       f"Your email account {mailbox.address} was connected without an SMTP server, so it "
                       f"cannot send. Reconnect it with its SMTP settings on {ACCOUNTS_PAGE} ({url}).",
                       422, "mailbox_id", link=(url, "Reconnect the account"), extra={"reconnect_url": url})
    return None


def _no_mailbox(url: str) -> Problem:
    return Problem("no_mailbox",
                   f"You have no email account connected. Connect one on {ACCOUNTS_PAGE} ({url}) "
                   f"to send email from the CRM.", 422, link=(url, "Connect an email account"),
                   extra={"connect_url": url})


def _no_customer_email(customer: Customer) -> Problem:
    return Problem("customer_has_no_email",
                   f"{customer.name} has no email address. Enter the customer's primary email "
                   f"in Customer details first.", 422)


def one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text or "").strip()


def parse_cc(value: str | list[str] | None) -> tuple[list[tuple[str, str]], list[str]]:
    """("Name", address) pairs of a Cc typed as "a@x, B <b@y>; c@z" (or a list of those),
    and the entries that are not valid addresses."""
    if not value:
        return [], []
    entries = value if isinstance(value, list) else [value]
    found: list[tuple[str, str]] = []
    bad: list[str] = []
    for entry in entries:
        if not isinstance(entry, str):
            bad.append(repr(entry))
            continue
        text = entry.replace(";", ",")
        pairs = [(n, a) for n, a in getaddresses([text]) if n or a]
        good_here, bad_here = [], []
        for name, address in pairs:
            try:
                good_here.append((one_line(name), normalise_address(address)))
            except ValueError:
                bad_here.append(address or name)
        # getaddresses() quietly drops or glues what it cannot read ("a@x b@y"): then the
        # whole entry is what the user must fix.
        if text.strip(" ,") and len(good_here) + len(bad_here) < max(1, text.count("@")):
            bad_here = [entry.strip()]
        bad.extend(bad_here)
        for name, address in good_here:
            if address not in {a for _, a in found}:
                found.append((name, address))
    return found, list(dict.fromkeys(bad))


def check(user: User, customer: Customer, draft: Draft, *, accounts_url: str) -> Checked:
    """Every precondition of DESIGN rule 10, in the seed's order; each failure its own Problem.
    `accounts_url`: where the person connects and reconnects mailboxes (the messages link it)."""
    if not user.can_see_activities:
        return Checked([activities_not_permitted()])
    problems: list[Problem] = []
    mailbox = None
    if not connected_mailboxes(user):
        problems.append(_no_mailbox(accounts_url))
    elif draft.mailbox_id is None:
        problems.append(Problem("mailbox_not_found", "Choose which of your email accounts to send from.",
                                422, "mailbox_id"))
    else:
        mailbox = db.session.get(Mailbox, draft.mailbox_id)
        if mailbox is None or mailbox.user_id != user.id:
            mailbox = None
            problems.append(Problem("mailbox_not_found",
                                    f"Email account {draft.mailbox_id} is not one of yours: "
                                    f"choose one of your own connected accounts.", 404, "mailbox_id"))
        else:
            problem = mailbox_problem(mailbox, accounts_url=accounts_url)
            if problem is not None:
                problems.append(problem)
    if not customer.primary_email:
        problems.append(_no_customer_email(customer))
    subject = one_line(draft.subject)
    if not subject:
        problems.append(Problem("subject_missing", "Enter a subject: an email cannot be sent without one.",
                                422, "subject"))
    elif len(subject) > MAX_SUBJECT_LENGTH:
        problems.append(Problem("subject_too_long", f"The subject is longer than {MAX_SUBJECT_LENGTH} characters.",
                                422, "subject"))
    elif found := headers.control_characters(subject):
        # What the person typed in this send is refused, not changed: they can fix it.
        problems.append(Problem("subject_invalid",
                                f"The subject holds {headers.describe(found)} once its encoded words (=?...?=) "
                                "are decoded, which would break the email's headers. Type the subject as plain "
                                "text on one line.", 422, "subject"))
    body_limit = max_body_bytes()
    body_size = len((draft.body or "").encode("utf-8", "surrogatepass"))
    if body_size > body_limit:
        problems.append(body_too_large(body_size, body_limit))
    elif not (draft.body or "").strip():
        problems.append(Problem("body_empty", "Write the email: its body is empty.", 422, "body"))
    cc, bad = parse_cc(draft.cc)
    unsafe = [(name, address) for name, address in cc
              if headers.control_characters(name) or headers.control_characters(address)]
    if bad:
        verb = "is not a valid email address" if len(bad) == 1 else "are not valid email addresses"
        problems.append(Problem("invalid_cc", f"Cc: {', '.join(repr(b) for b in bad)} {verb}. "
                                "Separate addresses with commas.", 422, "cc", extra={"invalid": bad}))
    elif unsafe:
        found = list(dict.fromkeys(c for name, address in unsafe
                                   for c in headers.control_characters(name) + headers.control_characters(address)))
        entries = [f"{name} <{address}>" if name else address for name, address in unsafe]
        problems.append(Problem("invalid_cc",
                                f"Cc: {', '.join(repr(e) for e in entries)} holds {headers.describe(found)} once "
                                "its encoded words (=?...?=) are decoded, which would break the email's headers. "
                                "Type names and addresses as plain text.", 422, "cc", extra={"invalid": entries}))
    elif len(cc) > MAX_CC:
        problems.append(Problem("invalid_cc", f"Cc holds {len(cc)} addresses; at most {MAX_CC} are allowed.",
                                422, "cc"))
    limit = max_attachment_bytes()
    total = sum(len(a.data) for a in draft.attachments)
    if total > limit:
        problems.append(attachment_too_large(total, limit))
    to = customer.primary_email
    cc = [(name, address) for name, address in cc if address != to]
    return Checked(problems, mailbox, subject, cc)


def body_too_large(size: int, limit: int) -> Problem:
    return Problem("body_too_large",
                   f"The email's text may be at most {megabytes(limit)}; this one is {megabytes(size)}. "
                   "Shorten it, or send the long part as an attachment.", 413, "body",
                   extra={"limit_bytes": limit})


def attachment_too_large(total: int | None, limit: int) -> Problem:
    size = f"; these are {megabytes(total)}" if total is not None else ""
    return Problem("attachment_too_large",
                   f"Attachments may be at most {megabytes(limit)} in total{size}. "
                   "Send fewer or smaller files, or share a link instead.", 413, "attachments",
                   extra={"limit_bytes": limit})
