""""Why was / wasn't this email logged?": the support page's check of one mailbox's recent mail.

Read-only on both sides. The mailbox is opened live over IMAP with folders selected
read-only and only headers fetched (BODY.PEEK, so nothing is marked as read), for a
bounded range: the newest RECENT_PER_FOLDER messages of each synced folder, plus Drafts,
Junk and Trash so that an email sitting there is explained too. The messages matching the
search are then put through the very rules the sync applies (``rules.decide`` on facts built
by ``portal.sync``), and compared with what the database holds. Nothing is written: an
ignored message leaves no trace, a logged one is only looked up.

No Flask here: the caller passes the mailbox and gets plain data back to render.
"""
from __future__ import annotations

import imaplib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select

from portal import matching
from portal.accounts.sessions import open_imap
from portal.extensions import db
from portal.mail import parse, rules
from portal.mail.errors import Classified, classify_exception, plain_words
from portal.mail.imap import SKIP_SPECIAL_USE, Folder, HeaderRecord, ImapSession
from portal.models import (
    Activity,
    Customer,
    CustomerContactEmail,
    Deal,
    Email,
    EmailSource,
    Mailbox,
)
from portal.models.mailboxes import DISCONNECTED
from portal.sync import choose_folders

RECENT_PER_FOLDER = 200  # newest messages looked at in each folder
MAX_FOLDERS = 40  # a server with hundreds of folders costs at most this many SELECTs
MAX_RESULTS = 25  # matching messages explained, newest first
MAX_QUERY = 200

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CustomerCompared:
    """One primary address history entry that involves an address of the message."""
    customer_id: int
    external_id: str
    name: str
    address: str
    fields: tuple[str, ...]  # where the address is in the message: From, To, Cc
    since: datetime | None
    until: datetime | None
    primary_then: bool  # the primary address at the message's time: the customer rule matches it


@dataclass(frozen=True)
class ContactNotMatched:
    """An additional contact address of a customer found in the message: never matched."""
    customer_id: int
    external_id: str
    name: str
    address: str


@dataclass(frozen=True)
class StoredCustomer:
    customer_id: int
    external_id: str
    name: str
    matched_address: str
    matched_field: str


@dataclass
class MessageCheck:
    folder: str
    special_use: str | None
    uid: int
    subject: str
    from_: str
    to: str
    cc: str
    date: datetime | None
    internal_date: datetime
    message_id: str | None
    flags: tuple[str, ...]
    verdicts: list[rules.Verdict]  # the back-fill window, then folder, draft, internal, customer
    would_log: bool
    progress: rules.Verdict  # has the sync reached this message yet (not a rule)
    compared: list[CustomerCompared]
    contacts: list[ContactNotMatched]
    stored_email_id: int | None
    stored_here: bool  # the stored email was seen at this very folder and UID
    stored_on: list[StoredCustomer]
    would_log_on: list[StoredCustomer]  # the customers the rules log it on (empty unless it is logged)
    support_contact: str | None = None  # whom to report to (EIS_SUPPORT_CONTACT)

    @property
    def stored(self) -> bool:
        return self.stored_email_id is not None

    @property
    def first_failure(self) -> rules.Verdict | None:
        return next((v for v in self.verdicts if not v.passed), None)

    @property
    def outcome(self) -> str:
        """One sentence: what happened to this email and what will."""
        if self.stored and self.would_log:
            return "Logged: the rules log it and it is stored."
        if self.stored:
            return ("Stored, although the rules would not log it now (logged earlier, for example "
                    "through another mailbox or before an address changed); logged email stays.")
        if self.would_log and not self.progress.passed:
            return "Not logged yet: the rules log it, and the sync has not reached it; it is logged at the next sync."
        if self.would_log:
            return ("The rules log it but it is not stored: look at the runs below for messages that "
                    f"could not be stored, and report it to {self.support_contact or 'your CRM administrator'} "
                    "if none is listed.")
        failure = self.first_failure
        return f"Not logged: {failure.explanation}" if failure else "Not logged."


@dataclass
class WhyResult:
    query: str
    checks: list[MessageCheck] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)  # folders looked at
    scanned: int = 0  # messages whose headers were read
    more: bool = False  # more messages matched than MAX_RESULTS
    error: Classified | None = None  # the IMAP failure, classified
    folder_errors: list[tuple[str, str]] = field(default_factory=list)  # (folder, the server's words)
    unavailable: str | None = None  # why the mailbox cannot be opened at all

    @property
    def error_words(self) -> str | None:
        return plain_words(self.error.reason) if self.error else None


@dataclass
class _Found:
    folder: Folder
    uidvalidity: int
    synced: bool
    record: HeaderRecord
    headers: parse.ParsedHeaders


def why(mailbox: Mailbox, query: str, *, connect: Callable[[Mailbox], ImapSession] = open_imap,
        per_folder: int = RECENT_PER_FOLDER, limit: int = MAX_RESULTS,
        support_contact: str | None = None) -> WhyResult:
    """Find the mailbox's recent messages matching `query` (subject, address or Message-ID;
    empty: the newest ones) and explain for each whether and why it is logged."""
    query = (query or "").strip()[:MAX_QUERY]
    result = WhyResult(query=query)
    if mailbox.state == DISCONNECTED or not mailbox.secret_encrypted:
        result.unavailable = ("This mailbox is disconnected: its credentials were wiped, so its mail "
                              "cannot be read. Emails logged from it stay on the customers.")
        return result
    try:
        found = _search(mailbox, query, connect, per_folder, result)
    except Exception as exc:  # every failure is shown classified, never as a 500
        result.error = classify_exception(exc)
        log.warning("why-check of mailbox %s could not read it: %s", mailbox.id, result.error.reason,
                    exc_info=result.error.reason == "protocol_error")
        return result
    found.sort(key=lambda f: (f.record.internal_date, f.record.uid), reverse=True)
    result.more = len(found) > limit
    result.checks = _explain(mailbox, found[:limit])
    for check in result.checks:
        check.support_contact = support_contact
    return result


# -- IMAP, read-only ---------------------------------------------------------------------------
def _search(mailbox: Mailbox, query: str, connect, per_folder: int, result: WhyResult) -> list[_Found]:
    session = connect(mailbox)
    try:
        folders = session.list_folders()
        synced = choose_folders(folders)
        # Drafts, Junk and Trash are never synced; looked at anyway, so a message there is explained.
        skipped = [f for f in folders if f.selectable and f.special_use in SKIP_SPECIAL_USE and f not in synced]
        found: list[_Found] = []
        for folder in (synced + skipped)[:MAX_FOLDERS]:
            try:
                records, uidvalidity = _newest(session, folder, per_folder)
            except imaplib.IMAP4.abort:
                raise  # the connection is gone: nothing more can be read
            except imaplib.IMAP4.error as exc:  # the server refused this folder (NO/BAD): go on
                result.folder_errors.append((folder.name, classify_exception(exc).detail))
                continue
            result.folders.append(folder.name)
            for record in records:
                result.scanned += 1
                headers = parse.parse_headers(record.header)
                if _matches(headers, query):
                    found.append(_Found(folder, uidvalidity, folder in synced, record, headers))
        return found
    finally:
        session.close()


def _newest(session: ImapSession, folder: Folder, count: int) -> tuple[list[HeaderRecord], int]:
    """Headers of the folder's newest `count` messages, the folder selected read-only."""
    status = session.status(folder.name, False)
    if status.messages == 0:
        return [], status.uidvalidity
    session.select(folder.name)
    return session.fetch_headers(session.newest_uids(status.messages, count)), status.uidvalidity


def _matches(headers: parse.ParsedHeaders, query: str) -> bool:
    if not query:
        return True
    needle = query.lower()
    haystack = [headers.subject.lower(), (headers.message_id or "").lower()]
    for address in (*headers.from_, *headers.to, *headers.cc):
        haystack += [address.address, address.name.lower()]
    return any(needle in text for text in haystack)


# -- the rules and the database, read-only -------------------------------------------------------
def _explain(mailbox: Mailbox, found: list[_Found]) -> list[MessageCheck]:
    if not found:
        return []
    addresses: set[str] = set()
    for item in found:
        addresses |= item.headers.all_addresses()
    primaries, deals = matching.crm_facts_for(addresses)
    internal = matching.internal_addresses()
    own = matching.owner_addresses(mailbox)
    contacts = db.session.execute(
        select(CustomerContactEmail.address, Customer.id, Customer.external_id, Customer.name)
        .join(Customer, Customer.id == CustomerContactEmail.customer_id)
        .where(CustomerContactEmail.address.in_(sorted(addresses)))
    ).all() if addresses else []
    customer_ids = {p.customer_id for p in primaries}
    customers = {c.id: c for c in db.session.execute(
        select(Customer.id, Customer.external_id, Customer.name).where(Customer.id.in_(sorted(customer_ids)))
    ).all()} if customer_ids else {}
    deal_ids = {d.deal_id for d in deals}
    names = {"customer": {cid: c.external_id for cid, c in customers.items()},
             "deal": dict(db.session.execute(select(Deal.id, Deal.external_id).where(Deal.id.in_(sorted(deal_ids))))
                          .all()) if deal_ids else {}}
    stored = _stored(mailbox, found)
    checkpoints = {cp.name: cp for cp in mailbox.checkpoints}

    checks = []
    for item in found:
        headers, record = item.headers, item.record
        facts = matching.message_facts(headers, record, item.folder)
        decision = rules.decide(facts, mailbox_address=mailbox.address, internal_addresses=internal,
                                primary_addresses=primaries, deals=deals, own_addresses=own, names=names)
        window = _window_verdict(mailbox, record)
        mine = headers.all_addresses()
        by_field = _fields_of(headers)
        email_id, here, stored_on = stored.get(_location(item), (None, False, []))
        checks.append(MessageCheck(
            folder=item.folder.name, special_use=item.folder.special_use, uid=record.uid,
            subject=headers.subject, from_=_join(headers.from_), to=_join(headers.to), cc=_join(headers.cc),
            date=headers.date, internal_date=record.internal_date, message_id=headers.message_id,
            flags=tuple(sorted(record.flags)),
            verdicts=[window, *decision.verdicts],
            would_log=window.passed and decision.logged,
            progress=_progress(item, checkpoints.get(item.folder.name)),
            compared=[
                CustomerCompared(
                    customer_id=p.customer_id, external_id=customers[p.customer_id].external_id,
                    name=customers[p.customer_id].name, address=p.address,
                    fields=tuple(by_field.get(p.address, ())), since=p.since, until=p.until,
                    primary_then=_primary_at(p, record.internal_date),
                )
                for p in sorted(primaries, key=lambda p: (p.customer_id, p.since or datetime.min))
                if p.address in mine and p.customer_id in customers
            ],
            contacts=[ContactNotMatched(customer_id=cid, external_id=ext, name=name, address=address)
                      for address, cid, ext, name in contacts if address in mine],
            stored_email_id=email_id, stored_here=here, stored_on=stored_on,
            would_log_on=[StoredCustomer(m.customer_id, customers[m.customer_id].external_id,
                                         customers[m.customer_id].name, m.address, m.field)
                          for m in (decision.matches if window.passed else ()) if m.customer_id in customers],
        ))
    return checks


def _stored(mailbox: Mailbox, found: list[_Found]) -> dict[tuple, tuple[int, bool, list[StoredCustomer]]]:
    """(folder, uidvalidity, uid) -> (stored email id, seen at that very place, customers it is on).

    Found by dedupe key (the Message-ID), or for a message without one by where this mailbox
    saw it: its key is a hash of the whole message, which the headers alone cannot give.
    """
    keys = sorted({_key_of(item) for item in found} - {None})
    emails = dict(db.session.execute(
        select(Email.dedupe_key, Email.id).where(Email.dedupe_key.in_(keys))).all()) if keys else {}
    wanted = {_location(item) for item in found}
    here = {
        (row.folder, row.uidvalidity, row.uid): row.email_id
        for row in db.session.execute(
            select(EmailSource.email_id, EmailSource.folder, EmailSource.uidvalidity, EmailSource.uid)
            .where(EmailSource.mailbox_id == mailbox.id,
                   EmailSource.uid.in_(sorted({item.record.uid for item in found})))
        ).all()
        if (row.folder, row.uidvalidity, row.uid) in wanted
    }
    on: dict[int, list[StoredCustomer]] = {}
    email_ids = sorted(set(emails.values()) | set(here.values()))
    if email_ids:
        for email_id, cid, ext, name, address, field_ in db.session.execute(
            select(Activity.email_id, Customer.id, Customer.external_id, Customer.name,
                   Activity.matched_address, Activity.matched_field)
            .join(Customer, Customer.id == Activity.customer_id)
            .where(Activity.email_id.in_(email_ids)).order_by(Activity.id)
        ).all():
            on.setdefault(email_id, []).append(StoredCustomer(cid, ext, name, address, field_))
    out = {}
    for item in found:
        location = _location(item)
        email_id = emails.get(_key_of(item)) or here.get(location)
        if email_id is not None:
            out[location] = (email_id, here.get(location) == email_id, on.get(email_id, []))
    return out


def _location(item: _Found) -> tuple[str, int, int]:
    return item.folder.name, item.uidvalidity, item.record.uid


def _key_of(item: _Found) -> str | None:
    return parse.dedupe_key(item.headers, b"") if item.headers.message_id else None


def _window_verdict(mailbox: Mailbox, record: HeaderRecord) -> rules.Verdict:
    start = mailbox.backfill_since
    when = _fmt(record.internal_date)
    if start is None:
        return rules.Verdict("window", True, f"The email arrived {when}; this mailbox has no back-fill limit.")
    if matching.outside_window(mailbox, record):
        return rules.Verdict(
            "window", False,
            f"The email arrived {when}, before the back-fill window, which starts {_fmt(start)} "
            f"(the mailbox was connected {_fmt(mailbox.connected_at)}); older emails are never logged.")
    return rules.Verdict(
        "window", True,
        f"The email arrived {when}, inside the synced window (from {_fmt(start)}, set when the mailbox "
        f"was connected {_fmt(mailbox.connected_at)}).")


def _progress(item: _Found, cp) -> rules.Verdict:
    uid = item.record.uid
    if not item.synced:
        return rules.Verdict("sync", False, f"The folder {item.folder.name} is never synced.")
    if cp is None or cp.uidvalidity is None:
        return rules.Verdict("sync", False, f"The folder {item.folder.name} has not been synced yet.")
    if cp.uidvalidity != item.uidvalidity:
        return rules.Verdict("sync", False, f"The folder {item.folder.name} was renumbered on the server "
                                            "(UIDVALIDITY changed) since the last sync; it is read again "
                                            "at the next one.")
    if uid > cp.last_uid:
        return rules.Verdict("sync", False, f"The sync has not reached this email yet ({item.folder.name} is "
                                            f"processed up to UID {cp.last_uid}; this is UID {uid}).")
    if cp.backfill_below_uid is not None and uid < cp.backfill_below_uid:
        return rules.Verdict("sync", False, f"The back-fill of {item.folder.name} has not reached this email yet "
                                            f"(done down to UID {cp.backfill_below_uid}; this is UID {uid}).")
    return rules.Verdict("sync", True, f"The sync has processed this email ({item.folder.name} UID {uid}).")


def _primary_at(entry: rules.PrimaryAddress, when: datetime) -> bool:
    # The customer rule's own test (rules: since <= when < until), for the table of customers compared.
    return (entry.since is None or entry.since <= when) and (entry.until is None or when < entry.until)


def _fields_of(headers: parse.ParsedHeaders) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, addresses in (("From", headers.from_), ("To", headers.to), ("Cc", headers.cc)):
        for address in addresses:
            if name not in out.setdefault(address.address, []):
                out[address.address].append(name)
    return out


def _join(addresses: list[parse.Address]) -> str:
    return ", ".join(f"{a.name} <{a.address}>" if a.name else a.address for a in addresses)


def _fmt(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
