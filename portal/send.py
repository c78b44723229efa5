"""Sending email to a customer from the CRM (DESIGN rule 10; the seed's "Why I can't send an email?").

accept(): checks every precondition (each with its own code and sentence), composes the
MIME message once, logs it on the customer at once (Email + Activity + OutgoingEmail in
one transaction) and queues it. send_outgoing(): the job body; sends those exact bytes
through the mailbox's SMTP server and, for generic IMAP servers, saves the copy in the
Sent folder. When that copy is synced later, its Message-ID finds the stored Email: one
email, no duplicate.
"""
from __future__ import annotations

import base64
import html
import logging
import mimetypes
import re
import smtplib
import ssl
import uuid
import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone
from email import policy as email_policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses, make_msgid

from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from portal import crypto
from portal import mailboxes as mailbox_service
from portal.addresses import normalise_address
from portal.extensions import db
from portal.mail import parse, rawstore, rules
from portal.mail.errors import ACCOUNTS_PAGE, Classified, classify_exception, classify_text, plain_words
from portal.models import Activity, Customer, CustomerPrimaryEmail, DealCustomer, Email, Mailbox, OutgoingEmail, User
from portal.timeutil import utcnow

log = logging.getLogger(__name__)

DEFAULT_MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024
DEFAULT_SMTP_TIMEOUT_SECONDS = 60
MAX_SUBJECT_LENGTH = 900  # a header line may hold 998 characters
MAX_CC = 50
MAX_KEY_LENGTH = 150  # the stored key is "<user id>:<key>", in 200 characters
# Microsoft and Google mailboxes linked by OAuth may come without SMTP settings.
PROVIDER_SMTP = {
    "microsoft": ("smtp.office365.com", 587, "starttls"),
    "google": ("smtp.gmail.com", 465, "ssl"),
}
CONNECTED_STATES = ("pending", "active", "problematic")


# --- preconditions ------------------------------------------------------------------------

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


def accounts_url() -> str:
    """Where a rep connects and reconnects mailboxes (the mailboxes area, when it exists)."""
    from flask import url_for

    if "mailboxes.mine" in current_app.view_functions:
        return url_for("mailboxes.mine")
    return "/mailboxes"


def max_attachment_bytes() -> int:
    return int(current_app.config.get("EIS_SEND_MAX_ATTACHMENT_BYTES") or DEFAULT_MAX_ATTACHMENT_BYTES)


def megabytes(size: int) -> str:
    value = size / (1024 * 1024)
    return f"{value:.0f} MB" if value == int(value) else f"{value:.1f} MB"


def connected_mailboxes(user: User) -> list[Mailbox]:
    """The user's own mailboxes that are connected (Problematic ones too: they are shown)."""
    return list(db.session.scalars(select(Mailbox).where(
        Mailbox.user_id == user.id, Mailbox.state.in_(CONNECTED_STATES)).order_by(Mailbox.id)))


def smtp_endpoint(mailbox: Mailbox) -> tuple[str | None, int | None, str]:
    if mailbox.smtp_host:
        return mailbox.smtp_host, mailbox.smtp_port or 587, mailbox.smtp_security or "starttls"
    return PROVIDER_SMTP.get(mailbox.provider, (None, None, "starttls"))


def activities_not_permitted() -> Problem:
    return Problem("activities_not_permitted",
                   "You may not see the Activities tab, so you cannot send email to customers. "
                   "Ask your administrator to give you the Activities permission.", 403)


def standing_problems(user: User, customer: Customer) -> list[Problem]:
    """What stops any email to this customer, whatever is typed: shown when the form opens."""
    if not user.can_see_activities:
        return [activities_not_permitted()]
    problems = []
    if not connected_mailboxes(user):
        problems.append(_no_mailbox())
    if not customer.primary_email:
        problems.append(_no_customer_email(customer))
    return problems


def mailbox_problem(mailbox: Mailbox) -> Problem | None:
    """Why this (own) mailbox cannot send now, or None."""
    url = accounts_url()
    if mailbox.state == "disconnected":
        return Problem("mailbox_disconnected",
                       f"Your email account {mailbox.address} is disconnected. Connect it again on "
                       f"{ACCOUNTS_PAGE} ({url}) to send from it.", 409, "mailbox_id",
                       link=(url, "Connect it again"), extra={"reconnect_url": url})
    if mailbox.state == "problematic":
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


def _no_mailbox() -> Problem:
    url = accounts_url()
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


def check(user: User, customer: Customer, draft: Draft) -> Checked:
    """Every precondition of DESIGN rule 10, in the seed's order; each failure its own Problem."""
    if not user.can_see_activities:
        return Checked([activities_not_permitted()])
    problems: list[Problem] = []
    mailbox = None
    if not connected_mailboxes(user):
        problems.append(_no_mailbox())
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
            problem = mailbox_problem(mailbox)
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
    if not (draft.body or "").strip():
        problems.append(Problem("body_empty", "Write the email: its body is empty.", 422, "body"))
    cc, bad = parse_cc(draft.cc)
    if bad:
        verb = "is not a valid email address" if len(bad) == 1 else "are not valid email addresses"
        problems.append(Problem("invalid_cc", f"Cc: {', '.join(repr(b) for b in bad)} {verb}. "
                                "Separate addresses with commas.", 422, "cc", extra={"invalid": bad}))
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


def attachment_too_large(total: int | None, limit: int) -> Problem:
    size = f"; these are {megabytes(total)}" if total is not None else ""
    return Problem("attachment_too_large",
                   f"Attachments may be at most {megabytes(limit)} in total{size}. "
                   "Send fewer or smaller files, or share a link instead.", 413, "attachments",
                   extra={"limit_bytes": limit})


# --- composing -------------------------------------------------------------------------------

def html_from_text(text: str) -> str:
    """The HTML alternative of what the user typed: escaped, blank lines make paragraphs,
    single line breaks <br>. The user's text is never taken as HTML."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    paragraphs = [p for p in re.split(r"\n[ \t]*\n", text) if p.strip()]
    body = "\n".join(
        "<p>" + "<br>\n".join(html.escape(line, quote=True) for line in p.strip("\n").split("\n")) + "</p>"
        for p in paragraphs
    )
    return ('<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head>\n'
            f'<body>\n{body}\n</body></html>\n')


def wire_address(address: str) -> str:
    """The address as SMTP and headers carry it: an international domain in its ASCII
    (punycode) form, so that only a non-ASCII local part needs SMTPUTF8."""
    local, _, domain = address.rpartition("@")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            pass  # left as typed: SMTPUTF8 carries it
    return f"{local}@{domain}"


def _needs_smtputf8(addresses: list[str]) -> bool:
    return any(not wire_address(a).isascii() for a in addresses)


def _address(name: str, address: str) -> Address:
    local, _, domain = wire_address(address).rpartition("@")
    return Address(display_name=one_line(name), username=local, domain=domain)


def compose(*, from_name: str, from_address: str, to_name: str, to_address: str,
            cc: list[tuple[str, str]], subject: str, body: str, attachments: list[Attachment],
            when: datetime | None = None) -> EmailMessage:
    """The message as it is sent, saved in Sent and stored: one set of bytes everywhere."""
    utf8 = _needs_smtputf8([from_address, to_address, *(a for _, a in cc)])
    msg = EmailMessage(policy=email_policy.SMTPUTF8 if utf8 else email_policy.SMTP)
    msg["From"] = _address(from_name, from_address)
    msg["To"] = _address(to_name, to_address)
    if cc:
        msg["Cc"] = [_address(name, address) for name, address in cc]
    msg["Subject"] = subject
    msg["Date"] = format_datetime(when or datetime.now(timezone.utc))
    msg["Message-ID"] = make_msgid(domain=from_address.rpartition("@")[2])
    text = body.replace("\r\n", "\n").replace("\r", "\n")
    # Quoted-printable keeps the message 7-bit: no server's 8BITMIME support is assumed.
    msg.set_content(text if text.endswith("\n") else text + "\n", cte="quoted-printable")
    msg.add_alternative(html_from_text(body), subtype="html", cte="quoted-printable")
    for item in attachments:
        maintype, _, subtype = item.content_type.partition("/")
        msg.add_attachment(item.data, maintype=maintype, subtype=subtype, filename=item.filename)
    return msg


def clean_filename(name: str | None) -> str:
    """A display name for an uploaded file: no path, no control characters."""
    name = re.split(r"[\\/]", name or "")[-1]
    name = re.sub(r"[\x00-\x1f\x7f]+", " ", name).strip().strip(".") or "attachment"
    return name[:200]


def content_type_of(filename: str, declared: str | None) -> str:
    declared = (declared or "").split(";")[0].strip().lower()
    if re.fullmatch(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*", declared) \
            and not declared.startswith("multipart/") and not declared.startswith("message/"):
        return declared
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


# --- accepting a send: logged at once, then queued -------------------------------------------

def stored_key(user: User, key: str) -> str:
    # Keys are the sender's own: another user's identical key is another email.
    return f"{user.id}:{key}"


def find_by_key(user: User, key: str) -> OutgoingEmail | None:
    return db.session.scalar(select(OutgoingEmail).where(OutgoingEmail.idempotency_key == stored_key(user, key)))


def new_key() -> str:
    return uuid.uuid4().hex


def accept(user: User, customer: Customer, draft: Draft, key: str | None = None) -> tuple[OutgoingEmail, bool]:
    """Check, compose, log and queue one email. Returns (outgoing, created); the same key
    again returns the first one (created False) and sends nothing new.
    Raises SendRefused with every failed precondition; then nothing is written or sent."""
    from portal.queue import enqueue_send

    key = key or new_key()
    if not user.can_see_activities:
        raise SendRefused([activities_not_permitted()])
    existing = find_by_key(user, key)
    if existing is not None:
        _requeue_if_lost(existing)
        return existing, False
    checked = check(user, customer, draft)
    if checked.problems:
        raise SendRefused(checked.problems)
    mailbox = checked.mailbox
    msg = compose(from_name=user.name or "", from_address=mailbox.address, to_name=customer.name,
                  to_address=customer.primary_email, cc=checked.cc, subject=checked.subject, body=draft.body,
                  attachments=draft.attachments)
    raw = msg.as_bytes()
    parsed = parse.parse_message(raw)
    now = utcnow()
    email = Email(
        dedupe_key=parse.dedupe_key(parsed, raw), message_id=parsed.message_id, subject=parsed.subject,
        from_addr=mailbox.address, from_name=parsed.from_[0].name if parsed.from_ else None,
        to_addrs=[{"name": a.name, "address": a.address} for a in parsed.to],
        cc_addrs=[{"name": a.name, "address": a.address} for a in parsed.cc],
        date=parsed.date, internal_date=now, text_body=parsed.text_body, html_body=parsed.html_body,
        attachments=parsed.attachments, raw_packed=rawstore.pack(raw), size=len(raw),
        parse_defects=parsed.defects or None,
    )
    db.session.add(email)
    for match in _matches(parsed, mailbox, customer, now):
        email.activities.append(Activity(
            customer_id=match.customer_id, mailbox_id=mailbox.id, direction=match.direction,
            matched_field=match.field, matched_address=match.address, deal_id=match.deal_id,
            email_date=email.date or now,
        ))
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
        from portal.queue import enqueue_send

        enqueue_send(outgoing.id)


def _matches(parsed: parse.ParsedMessage, mailbox: Mailbox, customer: Customer, now: datetime) -> list[rules.Match]:
    """The customers the rules log this email on (an additional customer of the deal in
    copy too), always including the addressee."""
    addresses = parsed.all_addresses()
    rows = db.session.execute(
        select(CustomerPrimaryEmail.customer_id, CustomerPrimaryEmail.address,
               CustomerPrimaryEmail.since, CustomerPrimaryEmail.until)
        .where(CustomerPrimaryEmail.address.in_(sorted(addresses)))).all()
    primaries = [rules.PrimaryAddress(customer_id=r[0], address=r[1], since=r[2], until=r[3]) for r in rows]
    customer_ids = sorted({p.customer_id for p in primaries} | {customer.id})
    deals = [rules.DealMembership(deal_id=d, customer_id=c, role=role) for d, c, role in db.session.execute(
        select(DealCustomer.deal_id, DealCustomer.customer_id, DealCustomer.role)
        .where(DealCustomer.customer_id.in_(customer_ids))).all()]
    facts = rules.MessageFacts(
        from_=tuple(a.address for a in parsed.from_), to=tuple(a.address for a in parsed.to),
        cc=tuple(a.address for a in parsed.cc), when=now, flags=frozenset({"\\Seen"}),
        folder_special_use="\\Sent")
    decision = rules.decide(facts, mailbox_address=mailbox.address,
                            internal_addresses=mailbox_service.internal_addresses(),
                            primary_addresses=primaries, deals=deals)
    matches = list(decision.matches)
    if customer.id not in {m.customer_id for m in matches}:
        # Sent from the CRM to this customer: logged on them even where the sync would not
        # log it (a colleague's mailbox in Cc makes it internal).
        matches.insert(0, rules.Match(customer_id=customer.id, field="to", address=customer.primary_email,
                                      direction="out", deal_id=None))
    return matches


# --- SMTP ------------------------------------------------------------------------------------

def open_smtp(mailbox: Mailbox) -> smtplib.SMTP:
    """Connect to the mailbox's SMTP server and log in (password, or XOAUTH2 for OAuth
    mailboxes, refreshing the token once when the server refuses it). The caller quits."""
    smtp = _connect(mailbox)
    try:
        if mailbox.provider == "imap":
            _login_password(smtp, mailbox.login or mailbox.address, crypto.decrypt(mailbox.secret_encrypted))
            return smtp
        from portal.oauth import access_token_for  # OAuth providers

        user = mailbox.login or mailbox.address
        try:
            _login_xoauth2(smtp, user, access_token_for(mailbox))
        except smtplib.SMTPAuthenticationError:
            # DESIGN auth_failed for OAuth: refresh the token and retry once, on a new connection.
            _close(smtp)
            smtp = _connect(mailbox)
            _login_xoauth2(smtp, user, access_token_for(mailbox, force_refresh=True))
        return smtp
    except BaseException:
        _close(smtp)
        raise


def _connect(mailbox: Mailbox) -> smtplib.SMTP:
    host, port, security = smtp_endpoint(mailbox)
    if host is None:
        raise SmtpNotConfigured(f"{mailbox.address} has no SMTP server")
    config = current_app.config
    timeout = float(config.get("EIS_SMTP_TIMEOUT_SECONDS") or DEFAULT_SMTP_TIMEOUT_SECONDS)
    context = ssl.create_default_context(cafile=config.get("EIS_TLS_CA_FILE")) \
        if security in ("ssl", "starttls") else None
    helo = config.get("EIS_SMTP_HELO_NAME") or None
    if security == "ssl":
        smtp = smtplib.SMTP_SSL(host, port, local_hostname=helo, timeout=timeout, context=context)
    else:
        smtp = smtplib.SMTP(host, port, local_hostname=helo, timeout=timeout)
    try:
        smtp.ehlo()
        if security == "starttls":
            smtp.starttls(context=context)
            smtp.ehlo()
    except BaseException:
        _close(smtp)
        raise
    return smtp


class SmtpNotConfigured(RuntimeError):
    pass


def _login_password(smtp: smtplib.SMTP, login: str, password: str) -> None:
    """AUTH PLAIN in UTF-8 (smtplib's own login() refuses non-ASCII passwords); other
    mechanisms through smtplib when the server offers no PLAIN."""
    if not smtp.has_extn("auth"):
        raise smtplib.SMTPNotSupportedError("The SMTP server offers no AUTH on this connection "
                                            "(it may need STARTTLS or SSL).")
    mechanisms = smtp.esmtp_features.get("auth", "").upper().split()
    if "PLAIN" not in mechanisms:
        smtp.login(login, password)
        return
    blob = base64.b64encode(f"\0{login}\0{password}".encode("utf-8")).decode("ascii")
    code, response = smtp.docmd("AUTH", "PLAIN " + blob)
    if code not in (235, 503):  # 503: already authenticated
        raise smtplib.SMTPAuthenticationError(code, response)


def _login_xoauth2(smtp: smtplib.SMTP, user: str, access_token: str) -> None:
    initial = f"user={user}\x01auth=Bearer {access_token}\x01\x01"

    def answer(challenge: bytes | None = None) -> str:
        # The first call gives the initial response; a challenge after it is the server's
        # JSON error, acknowledged with an empty line so that it answers 535 with its words.
        return initial if challenge is None else ""

    smtp.auth("XOAUTH2", answer, initial_response_ok=True)


def _close(smtp: smtplib.SMTP | None) -> None:
    if smtp is None:
        return
    try:
        smtp.quit()
    except Exception:  # the connection may already be gone; nothing left to do
        try:
            smtp.close()
        except Exception:
            pass


# --- the job body ------------------------------------------------------------------------------

# Why an outgoing email failed, in words for the rep (mailbox reasons use plain_words()).
_OUTGOING_WORDS = {
    "recipient_refused": "The mail server refused the recipient's address.",
    "sender_refused": "The mail server refused to send from this address.",
    "message_rejected": "The mail server rejected the message.",
    "mailbox_problematic": "The email account became Problematic before the email was sent; reconnect it.",
    "mailbox_disconnected": "The email account was disconnected before the email was sent.",
    "mailbox_cannot_send": "The email account has no SMTP server to send through.",
    "internal_error": "Something went wrong on our side; it was logged.",
}


def reason_words(reason: str | None) -> str:
    if not reason:
        return ""
    return _OUTGOING_WORDS.get(reason) or plain_words(reason)


class SendFailure(Exception):
    """A classified failure of one attempt: kind is refusal (the account), rejected (this
    message, permanently) or transient (retried)."""

    def __init__(self, kind: str, reason: str, detail: str, refusal_of_account: bool = False):
        super().__init__(f"{reason}: {detail}")
        self.kind, self.reason, self.detail = kind, reason, detail
        self.refusal_of_account = refusal_of_account


def classify_send_failure(exc: BaseException) -> SendFailure:
    if isinstance(exc, SmtpNotConfigured):
        return SendFailure("rejected", "mailbox_cannot_send", str(exc))
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        words = "; ".join(f"{address}: {code} {_text(message)}"
                          for address, (code, message) in exc.recipients.items())
        if all(code >= 500 for code, _ in exc.recipients.values()):
            return SendFailure("rejected", "recipient_refused", words)
        return SendFailure("transient", classify_text(words).reason, words)
    classified: Classified = classify_exception(exc)
    if classified.refusal:
        return SendFailure("refusal", classified.reason, classified.detail, refusal_of_account=True)
    code = getattr(exc, "smtp_code", None)
    if isinstance(exc, smtplib.SMTPResponseException) and isinstance(code, int) and 500 <= code < 600 \
            and classified.reason == "protocol_error":
        reason = "sender_refused" if isinstance(exc, smtplib.SMTPSenderRefused) else "message_rejected"
        return SendFailure("rejected", reason, classified.detail)
    return SendFailure("transient", classified.reason, classified.detail)


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def is_mail_fault(exc: BaseException) -> bool:
    """Faults of the mail server, the network or the stored credentials, as opposed to bugs."""
    return isinstance(exc, (smtplib.SMTPException, OSError, EOFError, crypto.SecretError, SmtpNotConfigured)) \
        or getattr(exc, "classified", None) is not None


def send_outgoing(outgoing_id: int, *, last_attempt: bool = True) -> dict:
    """Send one queued email. Idempotent: a sent (or finally failed) email is left alone.

    A refusal (the account's credentials) fails it, makes the mailbox Problematic and is
    not retried; a permanent rejection of the message fails it; a transient fault is
    recorded and raised so that RQ retries, and fails it at the last attempt.
    """
    outgoing = db.session.get(OutgoingEmail, outgoing_id)
    if outgoing is None:
        return {"outgoing_id": outgoing_id, "skipped": "no such outgoing email"}
    if outgoing.state in ("sent", "failed"):
        return {"outgoing_id": outgoing_id, "state": outgoing.state, "skipped": "already done"}
    mailbox = db.session.get(Mailbox, outgoing.mailbox_id)
    if mailbox.state in ("problematic", "disconnected"):
        _finish(outgoing, "failed", f"mailbox_{mailbox.state}",
                f"{mailbox.address} is {mailbox.state}" + (f" ({mailbox.reason})" if mailbox.reason else ""))
        return {"outgoing_id": outgoing_id, "state": "failed", "reason": outgoing.reason}
    email = db.session.get(Email, outgoing.email_id)
    raw = rawstore.unpack(email.raw_packed)
    recipients = [a["address"] for a in (email.to_addrs or [])] + list(outgoing.cc or [])
    outgoing.attempts += 1
    db.session.commit()  # the attempt counts even if the worker dies while sending
    try:
        refused = _deliver(mailbox, raw, recipients)
    except Exception as exc:
        db.session.rollback()
        if not is_mail_fault(exc):
            if last_attempt:
                _finish_safely(outgoing_id, "internal_error", f"{type(exc).__name__}: {exc}")
            raise
        failure = classify_send_failure(exc)
        return _failed_attempt(outgoing_id, failure, last_attempt, exc)
    outgoing = db.session.get(OutgoingEmail, outgoing_id)
    detail = None
    if refused:
        detail = "Some recipients were refused: " + "; ".join(
            f"{address}: {code} {_text(message)}" for address, (code, message) in refused.items())
    _finish(outgoing, "sent", None, detail)
    if mailbox.provider == "imap":  # Microsoft and Google keep a copy in Sent themselves
        _save_sent_copy_recorded(outgoing_id, mailbox, raw)
    return {"outgoing_id": outgoing_id, "state": "sent", "message_id": outgoing.message_id}


def _deliver(mailbox: Mailbox, raw: bytes, recipients: list[str]) -> dict:
    recipients = [wire_address(a) for a in recipients]
    smtp = open_smtp(mailbox)
    try:
        options = ["SMTPUTF8"] if _needs_smtputf8([mailbox.address, *recipients]) else []
        return smtp.sendmail(wire_address(mailbox.address), recipients, raw, mail_options=options)
    finally:
        _close(smtp)


def _failed_attempt(outgoing_id: int, failure: SendFailure, last_attempt: bool, exc: Exception) -> dict:
    outgoing = db.session.get(OutgoingEmail, outgoing_id)
    if failure.kind == "transient" and not last_attempt:
        # Still queued: RQ retries it after the next interval; the fault is shown meanwhile.
        outgoing.reason, outgoing.detail = failure.reason, failure.detail
        db.session.commit()
        log.info("outgoing email %s: %s, will be retried", outgoing_id, failure)
        raise exc
    if failure.refusal_of_account:
        mailbox = db.session.get(Mailbox, outgoing.mailbox_id)
        if mailbox.state in ("pending", "active"):
            mailbox_service.set_state(mailbox, "problematic", reason=failure.reason, detail=failure.detail)
    _finish(outgoing, "failed", failure.reason, failure.detail)
    if failure.kind == "transient":
        raise exc  # the last attempt: RQ records the job as failed too
    return {"outgoing_id": outgoing_id, "state": "failed", "reason": failure.reason}


def _finish(outgoing: OutgoingEmail, state: str, reason: str | None, detail: str | None) -> None:
    outgoing.state, outgoing.reason, outgoing.detail = state, reason, (detail or None) and detail[:2000]
    if state == "sent":
        outgoing.sent_at = utcnow()
    db.session.commit()


def _finish_safely(outgoing_id: int, reason: str, detail: str) -> None:
    try:
        db.session.rollback()
        outgoing = db.session.get(OutgoingEmail, outgoing_id)
        if outgoing is not None and outgoing.state == "queued":
            _finish(outgoing, "failed", reason, detail)
    except Exception:  # the database itself may be what failed; RQ keeps the job's error
        log.exception("outgoing email %s: could not record the failure", outgoing_id)
        db.session.rollback()


# --- the copy in Sent ------------------------------------------------------------------------

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
    session = mailbox_service.open_session(mailbox)
    try:
        folder = sent_folder_name(session.list_folders())
        if not session.client.folder_exists(folder):
            session.client.create_folder(folder)
        session.client.append(folder, raw, flags=[b"\\Seen"], msg_time=datetime.now(timezone.utc))
        return folder
    finally:
        session.close()


def _save_sent_copy_recorded(outgoing_id: int, mailbox: Mailbox, raw: bytes) -> None:
    """The email is sent whatever happens here: a failed copy is noted on it, not retried
    (a retry would send it again)."""
    try:
        save_sent_copy(mailbox, raw)
    except Exception as exc:
        if not is_mail_fault(exc) and not _is_imap_error(exc):
            raise
        words = classify_exception(exc).detail
        log.warning("outgoing email %s: sent, but the copy in Sent was not saved: %s", outgoing_id, words)
        db.session.rollback()
        outgoing = db.session.get(OutgoingEmail, outgoing_id)
        note = f"Sent, but the copy could not be saved in the Sent folder: {words}"
        outgoing.detail = f"{outgoing.detail}\n{note}" if outgoing.detail else note
        db.session.commit()


def _is_imap_error(exc: BaseException) -> bool:
    import imaplib

    from imapclient.exceptions import IMAPClientError

    return isinstance(exc, (imaplib.IMAP4.error, IMAPClientError))
