"""One mailbox's sync: drives portal.mail and stores what the rules log.

Per folder (DESIGN "Sync, per folder"): a STATUS decides whether anything moved; new
mail (UID > last_uid) goes first, then the back-fill of the window, newest first. Headers
are fetched in batches and every message is decided on them; only messages that will be
logged are fetched whole. Each batch is stored in one transaction together with the
checkpoint, so a worker killed at any moment loses nothing and duplicates nothing.
"""
from __future__ import annotations

import binascii
import imaplib
import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from flask import current_app
from sqlalchemy import String, any_, bindparam, func, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from portal import mailboxes as mailbox_service
from portal import runtime_settings
from portal.extensions import db
from portal.mail import parse, rawstore, rules
from portal.mail.errors import classify_exception
from portal.mail.imap import SKIP_SPECIAL_USE, Folder, HeaderRecord, ImapSession
from portal.models import (
    Activity, CustomerPrimaryEmail, DealCustomer, Email, EmailSource, FolderCheckpoint, Mailbox, SyncRun,
)
from portal.queue import get_redis
from portal.scheduling import backoff_delay, next_interval
from portal.timeutil import utcnow

log = logging.getLogger(__name__)
LOCK_TTL_SECONDS = 120
MAX_BAD_LOG = 200

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) end
return 0
"""


def lock_key(mailbox_id: int) -> str:
    return f"eis:lock:mailbox:{mailbox_id}"


def release_lock_of_run(run: SyncRun) -> None:
    get_redis().eval(_RELEASE, 1, lock_key(run.mailbox_id), str(run.id))


class AlreadyRunning(Exception):
    pass


def choose_folders(folders: list[Folder]) -> list[Folder]:
    """Every selectable folder but Drafts, Junk and Trash; where \\All exists, that alone."""
    selectable = [f for f in folders if f.selectable]
    everything = [f for f in selectable if f.special_use == "\\All"]
    if everything:
        return everything[:1]
    return [f for f in selectable if f.special_use not in SKIP_SPECIAL_USE]


def run_sync(mailbox_id: int, *, trigger: str, requested_by_id: int | None = None,
             job_id: str | None = None) -> SyncRun | None:
    """Sync one mailbox now. Returns the run, or None when there was nothing to do
    (mailbox gone, Problematic or disconnected). Raises AlreadyRunning if locked."""
    mailbox = db.session.get(Mailbox, mailbox_id)
    if mailbox is None or not mailbox.is_syncable:
        return None
    redis = get_redis()
    key = lock_key(mailbox_id)
    claim = "claim-" + uuid.uuid4().hex
    if not redis.set(key, claim, nx=True, ex=LOCK_TTL_SECONDS):
        raise AlreadyRunning(f"mailbox {mailbox_id} is being synced by another worker")
    run = SyncRun(mailbox_id=mailbox_id, trigger=trigger, requested_by_id=requested_by_id, job_id=job_id,
                  ignored={}, bad_message_log=[])
    db.session.add(run)
    db.session.commit()
    redis.set(key, str(run.id), xx=True, keepttl=True)
    session: ImapSession | None = None
    # A batch's commit would expire every loaded object, and the next batch would read the
    # mailbox, the run and the checkpoint again: three queries a batch for rows only this
    # run writes. _finish_success reads the mailbox afresh; a rollback expires all anyway.
    orm = db.session()
    expire_on_commit, orm.expire_on_commit = orm.expire_on_commit, False
    try:
        session = mailbox_service.open_session(mailbox)
        MailboxSync(mailbox, run, session).sync()
        _finish_success(mailbox, run, session)
    except Exception as exc:
        db.session.rollback()
        _finish_failure(mailbox, run, session, exc)
        if not _is_mail_fault(exc):
            raise  # a bug or a database fault: let RQ record it as failed too
    finally:
        orm.expire_on_commit = expire_on_commit
        if session is not None:
            session.close()
        release_lock_of_run(run)
    return run


def _is_mail_fault(exc: Exception) -> bool:
    """Faults of the mail server or network: classified and recorded, the job ends cleanly."""
    import imaplib
    import socket
    import ssl

    from imapclient.exceptions import IMAPClientError

    from portal.crypto import SecretError

    return isinstance(exc, (imaplib.IMAP4.error, IMAPClientError, socket.error, ssl.SSLError, EOFError,
                            TimeoutError, SecretError)) or getattr(exc, "classified", None) is not None


def _finish_success(mailbox: Mailbox, run: SyncRun, session: ImapSession) -> None:
    db.session.refresh(mailbox)  # its owner may have disconnected it, or support changed it, meanwhile
    now = utcnow()
    run.status = "succeeded"
    run.finished_at = run.heartbeat_at = now
    run.imap_commands = session.commands
    run.phase = None
    mailbox.last_sync_at = mailbox.last_success_at = now
    mailbox.consecutive_failures = 0
    if mailbox.state == "pending" or mailbox.reason:
        mailbox_service.set_state(mailbox, "active")
    mailbox.next_sync_at = now + _interval(mailbox)
    db.session.commit()


def _finish_failure(mailbox: Mailbox, run: SyncRun, session: ImapSession | None, exc: Exception) -> None:
    classified = classify_exception(exc)
    if not _is_mail_fault(exc):
        classified = type(classified)(reason="internal_error", refusal=False,
                                      detail=f"{type(exc).__name__}: {exc}"[:2000], retry_after=None)
    mailbox = db.session.get(Mailbox, mailbox.id)
    run = db.session.get(SyncRun, run.id)
    now = utcnow()
    run.status = "failed"
    run.finished_at = run.heartbeat_at = now
    run.error_class = classified.reason
    run.error_detail = classified.detail
    run.imap_commands = session.commands if session else run.imap_commands
    mailbox.last_sync_at = now
    if mailbox.state not in ("pending", "active"):
        db.session.commit()  # disconnected while we ran: leave it as it is
        return
    threshold = runtime_settings.get("problematic_after_failures")
    if classified.reason != "throttled":  # throttling is never Problematic by itself
        mailbox.consecutive_failures += 1
    if classified.refusal or mailbox.consecutive_failures >= threshold:
        mailbox_service.set_state(mailbox, "problematic", reason=classified.reason, detail=classified.detail)
    else:
        mailbox.reason, mailbox.detail = classified.reason, classified.detail  # shown as "retrying"
        mailbox.next_sync_at = now + backoff_delay(max(mailbox.consecutive_failures, 1),
                                                   retry_after=classified.retry_after)
    db.session.commit()


def _interval(mailbox: Mailbox) -> timedelta:
    since = utcnow() - timedelta(days=1)
    recent = db.session.scalar(
        select(db.func.coalesce(db.func.sum(SyncRun.seen), 0)).where(
            SyncRun.mailbox_id == mailbox.id, SyncRun.started_at >= since, SyncRun.trigger != "backfill")
    ) or 0
    owner = mailbox.owner
    active = bool(owner and owner.last_seen_at and owner.last_seen_at >= utcnow() - timedelta(hours=1))
    return next_interval(min_minutes=runtime_settings.get("interval_min_minutes"),
                         max_minutes=runtime_settings.get("interval_max_minutes"),
                         recent_messages=int(recent), owner_active=active)


@dataclass
class _Pending:
    """A message decided as logged, waiting for its body."""
    record: HeaderRecord
    headers: parse.ParsedHeaders
    decision: rules.Decision
    key: str | None  # dedupe key when known from the headers (Message-ID)
    raw: bytes | None = None
    parsed: parse.ParsedMessage | None = None
    extra: dict = field(default_factory=dict)


class MailboxSync:
    def __init__(self, mailbox: Mailbox, run: SyncRun, session: ImapSession):
        self.mailbox, self.run, self.session = mailbox, run, session
        self.config = current_app.config
        self.internal = mailbox_service.internal_addresses()
        self.own = owner_addresses(mailbox)  # decide the direction (rules.message_direction)
        self.redis = get_redis()
        self.postgresql = _dialect() == "postgresql"

    # -- orchestration --------------------------------------------------------------------
    def sync(self) -> None:
        condstore = "CONDSTORE" in self.session.capabilities()
        checkpoints = {cp.name: cp for cp in self.mailbox.checkpoints}
        # STATUS the known folders before LIST: Dovecot answers STATUS of a large Maildir
        # INBOX about 20 times slower once a LIST ran in the session (bench/sync.py).
        statuses = {}
        for name in checkpoints:
            try:
                statuses[name] = self.session.status(name, condstore)
            except imaplib.IMAP4.error as exc:
                if isinstance(exc, imaplib.IMAP4.abort):
                    raise  # the connection is gone, not the folder
                log.info("mailbox %s: folder %s gone (%s)", self.mailbox.id, name, exc)
        folders = choose_folders(self.session.list_folders())
        work = []
        for folder in folders:
            status = statuses.get(folder.name) or self.session.status(folder.name, condstore)
            cp = checkpoints.get(folder.name)
            if cp is None:
                cp = FolderCheckpoint(mailbox_id=self.mailbox.id, name=folder.name, special_use=folder.special_use)
                db.session.add(cp)
            quiet = (cp.uidvalidity == status.uidvalidity and cp.uidnext == status.uidnext
                     and cp.backfill_below_uid is None)
            if not quiet:
                work.append((folder, status, cp))
        db.session.commit()
        for folder, status, cp in work:
            self.sync_folder(folder, status, cp)

    def sync_folder(self, folder: Folder, status, cp: FolderCheckpoint) -> None:
        self.session.select(folder.name)
        if cp.uidvalidity != status.uidvalidity:
            if cp.uidvalidity is not None:
                log.info("mailbox %s folder %s: UIDVALIDITY %s -> %s, re-reading the window",
                         self.mailbox.id, folder.name, cp.uidvalidity, status.uidvalidity)
            # Everything below UIDNEXT now is back-fill territory; above it is new mail.
            cp.uidvalidity = status.uidvalidity
            cp.last_uid = status.uidnext - 1
            cp.backfill_below_uid = status.uidnext
            cp.backfill_total = None
            cp.backfill_done = 0
            db.session.commit()
        batch = self.config["EIS_HEADER_BATCH"]
        new_uids = self.session.uids_above(cp.last_uid)
        self._phase(f"new mail in {folder.name}", len(new_uids))

        def new_mail_done(cp, chunk):
            cp.last_uid = max(chunk)

        self.run_batches(folder, cp, [new_uids[i:i + batch] for i in range(0, len(new_uids), batch)],
                         new_mail_done)
        if cp.backfill_below_uid is not None:
            window = self.mailbox.backfill_since or self.mailbox.connected_at
            todo = sorted(self.session.uids_since((window - timedelta(days=1)).date(), cp.backfill_below_uid),
                          reverse=True)
            if cp.backfill_total is None:
                cp.backfill_total = len(todo)
            self._phase(f"back-filling {folder.name}", len(todo))

            def backfill_done(cp, chunk):
                cp.backfill_below_uid = min(chunk)
                cp.backfill_done += len(chunk)

            self.run_batches(folder, cp, [todo[i:i + batch] for i in range(0, len(todo), batch)], backfill_done)
            cp.backfill_below_uid = None
        cp.uidnext = status.uidnext
        cp.highestmodseq = status.highestmodseq
        cp.messages = status.messages
        self.run.imap_commands = self.session.commands
        db.session.commit()

    def _phase(self, phase: str, total: int) -> None:
        self.run.phase = phase
        self.run.progress_total = total
        self.run.progress_done = 0
        db.session.commit()

    # -- one batch, one transaction ---------------------------------------------------------
    def run_batches(self, folder: Folder, cp: FolderCheckpoint, chunks: list[list[int]], advance) -> None:
        for chunk in chunks:
            self.process(folder, cp, chunk, self.session.fetch_headers(chunk), advance)

    def process(self, folder: Folder, cp: FolderCheckpoint, uids: list[int], records: list[HeaderRecord],
                advance) -> None:
        fetched_bodies: dict[int, bytes] = {}
        for attempt in range(3):
            try:
                self._relaxed_commit()
                self._store_batch(folder, cp, records, fetched_bodies)
                advance(cp, uids)
                self.run.progress_done += len(uids)
                self._heartbeat()
                db.session.commit()
                return
            except IntegrityError:
                # Another worker stored the same message (another mailbox) at the same time:
                # roll back and redo the batch (its bodies are kept); de-duplication then
                # finds the other worker's row.
                db.session.rollback()
                if attempt == 2:
                    raise

    def _relaxed_commit(self) -> None:
        """PostgreSQL: this batch's commit does not wait for its WAL to reach the disk
        (SET LOCAL: this transaction only). A database crash may lose the last batches'
        commits, never consistency; their checkpoints go with them, so the next sync redoes
        exactly those. A commit cost 16 ms, half of it that wait (bench/sync.py). SQLite
        makes the same trade with synchronous=NORMAL (portal/extensions.py)."""
        if self.postgresql:
            db.session.execute(text("SET LOCAL synchronous_commit TO OFF"))

    def _heartbeat(self) -> None:
        self.run.heartbeat_at = utcnow()
        self.run.imap_commands = self.session.commands
        self.redis.eval(_EXTEND, 1, lock_key(self.mailbox.id), str(self.run.id), LOCK_TTL_SECONDS)

    def _store_batch(self, folder: Folder, cp: FolderCheckpoint, records: list[HeaderRecord],
                     fetched_bodies: dict[int, bytes]) -> None:
        ignored = dict(self.run.ignored or {})
        pending: list[_Pending] = []
        in_window = [r for r in records if not outside_window(self.mailbox, r)]
        self.run.seen += len(records)  # once per batch: each ORM attribute write costs
        self.run.bytes_fetched += sum(len(r.header) for r in records)
        if len(in_window) < len(records):
            ignored["before_window"] = ignored.get("before_window", 0) + len(records) - len(in_window)
        # Most mail involves no customer. An address-shaped scan of the header bytes finds
        # every address the parser would (and more); one query tells which are customers'.
        # Only messages naming a customer, or written oddly enough to hide one from the
        # scan, are parsed in full and decided by the rules.
        tokens: dict[int, set[str]] = {}
        unusual: set[int] = set()
        for record in in_window:
            tokens[record.uid], odd = _scan(record.header)
            if odd:
                unusual.add(record.uid)
        primaries, deals = self._crm_for(set().union(*tokens.values()) if tokens else set())
        customer_addresses = {p.address for p in primaries}
        candidates = []
        for record in in_window:
            if tokens[record.uid] & customer_addresses or record.uid in unusual:
                candidates.append((record, parse.parse_headers(record.header)))
            else:
                reason = self._reason_without_customer(record, tokens[record.uid])
                ignored[reason] = ignored.get(reason, 0) + 1
        hidden = set().union(*(h.all_addresses() for _, h in candidates)) - set().union(*tokens.values()) \
            if candidates else set()
        if hidden:
            more, more_deals = self._crm_for(hidden)
            primaries, deals = primaries + more, deals + more_deals
        for record, headers in candidates:
            decision = rules.decide(
                message_facts(headers, record, folder), mailbox_address=self.mailbox.address,
                internal_addresses=self.internal, primary_addresses=primaries, deals=deals,
                own_addresses=self.own,
            )
            if not decision.logged:
                ignored[decision.ignore_reason] = ignored.get(decision.ignore_reason, 0) + 1
                continue
            # Known from the headers when there is a Message-ID; else from the body, later.
            key = parse.dedupe_key(headers, b"") if headers.message_id else None
            pending.append(_Pending(record, headers, decision, key))
        self.run.ignored = ignored
        if not pending:
            return
        known = self._known_emails({p.key for p in pending if p.key})
        need_body = [p for p in pending if p.key is None or p.key not in known]
        self._fetch_bodies(need_body, fetched_bodies)
        with db.session.no_autoflush:  # the batch goes to the database in one flush, at commit
            for item in pending:
                self._store_one_guarded(folder, cp, item, known)

    def _store_one_guarded(self, folder: Folder, cp: FolderCheckpoint, item: _Pending, known: dict) -> None:
        try:
            self._store_one(folder, cp, item, known)
        except SQLAlchemyError:
            raise  # the session is unusable now: the batch is retried or the run fails
        except Exception as exc:  # a message we cannot read is recorded and skipped
            self._bad(folder, item.record.uid, f"{type(exc).__name__}: {exc}")

    def _reason_without_customer(self, record: HeaderRecord, tokens: set[str]) -> str:
        """The reason rules.decide gives a message that names no customer (same order)."""
        if "\\Draft" in record.flags:
            return "draft_flag"
        if (tokens & self.internal) - {self.mailbox.address}:
            return "internal"
        return "no_customer"

    def _crm_for(self, addresses: set[str]):
        return crm_facts_for(addresses)

    def _known_emails(self, keys: set[str]) -> dict[str, Email]:
        if not keys:
            return {}
        return {e.dedupe_key: e for e in db.session.scalars(select(Email).where(Email.dedupe_key.in_(sorted(keys))))}

    def _fetch_bodies(self, items: list[_Pending], cache: dict[int, bytes]) -> None:
        cap = self.config["EIS_BODY_BATCH_BYTES"]
        missing = [p for p in items if p.record.uid not in cache]
        group: list[int] = []
        size = 0
        for item in missing:
            group.append(item.record.uid)
            size += item.record.size
            if size >= cap:
                cache.update(self.session.fetch_bodies(group))
                group, size = [], 0
        if group:
            cache.update(self.session.fetch_bodies(group))
        for item in items:
            item.raw = cache.get(item.record.uid)

    def _store_one(self, folder: Folder, cp: FolderCheckpoint, item: _Pending, known: dict[str, Email]) -> None:
        email = known.get(item.key) if item.key else None
        if email is None:
            if item.raw is None:
                self._bad(folder, item.record.uid, "the server returned no body for this message")
                return
            if item.key is None:
                item.key = parse.content_hash(item.raw)
                email = known.get(item.key) or self._known_emails({item.key}).get(item.key)
        if email is None:
            email = self._new_email(item)
            known[item.key] = email
            self.run.logged += 1
        else:
            self.run.duplicates += 1
        source_exists = email.id is not None and db.session.scalar(select(EmailSource.id).where(
            EmailSource.mailbox_id == self.mailbox.id, EmailSource.folder == folder.name,
            EmailSource.uidvalidity == cp.uidvalidity, EmailSource.uid == item.record.uid))
        if not source_exists:
            db.session.add(EmailSource(email=email, mailbox_id=self.mailbox.id, folder=folder.name,
                                       uidvalidity=cp.uidvalidity, uid=item.record.uid))
        have = {a.customer_id for a in email.activities}  # in memory for an email new in this batch
        if item.decision.matches and item.decision.matches[0].direction == "out":
            # Seen first in another folder (INBOX) and now in this mailbox's Sent folder: the
            # mailbox sent it, so it is "out" on every customer this mailbox logged it on.
            for activity in email.activities:
                if activity.mailbox_id == self.mailbox.id and activity.direction != "out":
                    activity.direction = "out"
        for match in item.decision.matches:
            if match.customer_id in have:
                continue
            email.activities.append(Activity(
                customer_id=match.customer_id, mailbox_id=self.mailbox.id, direction=match.direction,
                matched_field=match.field, matched_address=match.address, deal_id=match.deal_id,
                email_date=email.date or email.internal_date,
            ))
            have.add(match.customer_id)

    def _new_email(self, item: _Pending) -> Email:
        # The header fields come from the server's header extract the rules decided on, not
        # from a second parse of the same lines: a malformed header line can stop the
        # whole-message parse early, losing headers the extract still has.
        parsed = parse.parse_message(item.raw, headers=item.headers)
        first_from = parsed.from_[0] if parsed.from_ else None
        email = Email(
            dedupe_key=item.key, message_id=_clip(parsed.message_id, 998), subject=parsed.subject,
            from_addr=_clip(first_from.address, 320) if first_from else None,
            from_name=_clip(first_from.name, 500) if first_from else None,
            to_addrs=[{"name": a.name, "address": a.address} for a in parsed.to],
            cc_addrs=[{"name": a.name, "address": a.address} for a in parsed.cc],
            date=parsed.date, internal_date=item.record.internal_date,
            text_body=parsed.text_body, html_body=parsed.html_body, attachments=parsed.attachments,
            raw_packed=rawstore.pack(item.raw), size=len(item.raw),
            parse_defects=parsed.defects or None,
        )
        self.run.bytes_fetched += len(item.raw)
        db.session.add(email)
        return email

    def _bad(self, folder: Folder, uid: int, reason: str) -> None:
        self.run.bad_messages += 1
        entries = list(self.run.bad_message_log or [])
        if len(entries) < MAX_BAD_LOG:
            entries.append({"folder": folder.name, "uid": uid, "reason": reason[:500]})
        self.run.bad_message_log = entries
        log.warning("mailbox %s %s UID %s not stored: %s", self.mailbox.id, folder.name, uid, reason)


_ADDRESS_TOKEN = re.compile(rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\x80-\xff-]+@[A-Za-z0-9\x80-\xff-]+(?:\.[A-Za-z0-9\x80-\xff-]+)+")
# A Message-ID looks like an address but names nobody: its line (and folded continuation
# lines) is left out of the scan, which halves the addresses looked up per batch.
_MESSAGE_ID_FIELD = re.compile(rb"^message-id:[^\n]*(?:\n[ \t][^\n]*)*", re.IGNORECASE | re.MULTILINE)


def _scan(header: bytes) -> tuple[set[str], bool]:
    """(everything shaped like an address in the header extract but its Message-ID, whether
    the message must be parsed in full anyway). The second is true where the scan may not
    see what the parser sees: an @ outside the tokens found (quoted local parts, dotless
    domains, obsolete route or spaced syntax), escapes, encoded words it cannot decode,
    8-bit bytes that are not UTF-8 (the parser reads them in another charset). Encoded words
    are decoded first: a mailer may write a whole "Name <address>" as one."""
    text = _MESSAGE_ID_FIELD.sub(b"", header)
    odd = False
    if b"=?" in text:
        text, odd = _decode_encoded_words(text)
    found = _ADDRESS_TOKEN.findall(text)
    unusual = odd or len(found) != text.count(b"@") or b"\\" in text
    tokens = set()
    for token in found:
        try:
            tokens.add(token.decode("utf-8").lower().strip("."))
        except UnicodeDecodeError:
            unusual = True
    return tokens, unusual


_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
# Charsets whose bytes for ASCII are ASCII: an @ or an address reads the same in them.
_ASCII_SUPERSETS = re.compile(rb"(?:us-ascii|utf-8|iso-8859-\d+|windows-125\d|cp125\d|koi8-[ru]|latin\d?)(?:\*.*)?",
                              re.IGNORECASE)


def _decode_encoded_words(text: bytes) -> tuple[bytes, bool]:
    """The header with its RFC 2047 encoded words decoded to their bytes, and whether one
    could not be (an unknown or ASCII-incompatible charset, broken base64)."""
    failed = False

    def decode(match: re.Match) -> bytes:
        nonlocal failed
        charset, kind, payload = match.groups()
        if not _ASCII_SUPERSETS.fullmatch(charset):
            failed = True
            return match.group(0)
        try:
            if kind in b"bB":
                return binascii.a2b_base64(payload + b"=" * (-len(payload) % 4))
            return binascii.a2b_qp(payload.replace(b"_", b" "), header=True)
        except (binascii.Error, ValueError):
            failed = True
            return match.group(0)

    return _ENCODED_WORD.sub(decode, text), failed


def _clip(value: str | None, length: int) -> str | None:
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


# -- for the support page "why was / wasn't this email logged?" (portal/diagnose.py) ------------
def owner_addresses(mailbox: Mailbox) -> frozenset[str]:
    """The addresses of every mailbox of this mailbox's owner, whatever its state (itself
    included): an email from any of them is "out" (rules.message_direction)."""
    return frozenset(db.session.scalars(
        select(Mailbox.address).where(Mailbox.user_id == mailbox.user_id)).all()) | {mailbox.address}


def crm_facts_for(addresses: set[str]) -> tuple[list[rules.PrimaryAddress], list[rules.DealMembership]]:
    """Primary address history entries and deal memberships for these addresses: what the
    rules compare a message with (the sync and the support page's why-check both use it)."""
    if not addresses:
        return [], []
    rows = db.session.execute(
        select(CustomerPrimaryEmail.customer_id, CustomerPrimaryEmail.address,
               CustomerPrimaryEmail.since, CustomerPrimaryEmail.until)
        .where(_one_of(CustomerPrimaryEmail.address, sorted(addresses)))
    ).all()
    primaries = [rules.PrimaryAddress(customer_id=r[0], address=r[1], since=r[2], until=r[3]) for r in rows]
    customer_ids = {p.customer_id for p in primaries}
    deals = []
    if customer_ids:
        deals = [rules.DealMembership(deal_id=d, customer_id=c, role=role) for d, c, role in db.session.execute(
            select(DealCustomer.deal_id, DealCustomer.customer_id, DealCustomer.role)
            .where(DealCustomer.customer_id.in_(sorted(customer_ids)))).all()]
    return primaries, deals


def _dialect() -> str:
    return db.session.get_bind().dialect.name


def _one_of(column, values: list[str]):
    """`column IN (values)` with the values in one bound parameter, not one each: a
    back-fill batch looks up about a thousand addresses, and expanding a thousand bind
    parameters cost SQLAlchemy more than the database's lookups (bench/sync.py)."""
    dialect = _dialect()
    if dialect == "sqlite":
        listed = func.json_each(json.dumps(values)).table_valued("value")
        return column.in_(select(listed.c.value))
    if dialect == "postgresql":
        return column == any_(bindparam("values", values, type_=ARRAY(String)))
    return column.in_(values)


def outside_window(mailbox: Mailbox, record: HeaderRecord) -> bool:
    """True when the sync skips the message as older than the mailbox's back-fill window."""
    return mailbox.backfill_since is not None and record.internal_date < mailbox.backfill_since
