"""One mailbox's sync: drives portal.mail and stores what the rules log.

Per folder (DESIGN "Sync, per folder"): a STATUS decides whether anything moved; new
mail (UID > last_uid) goes first, then the back-fill of the window, newest first. Headers
are fetched in batches and every message is decided on them; only messages that will be
logged are fetched whole. Each batch is stored in one transaction together with the
checkpoint, so a worker killed at any moment loses nothing and duplicates nothing.
"""
from __future__ import annotations

import imaplib
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property

from flask import current_app
from sqlalchemy import select, text
from sqlalchemy.orm import joinedload
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from portal import matching, run_history
from portal.accounts import state
from portal.accounts.sessions import open_imap
from portal.extensions import db
from portal.mail import parse, rules
from portal.mail.errors import classify_exception, is_mail_fault
from portal.mail.imap import SKIP_SPECIAL_USE, Folder, HeaderRecord, ImapSession
from portal.mail.scan import scan_addresses
from portal.models import Email, EmailSource, FolderCheckpoint, Mailbox, SyncRun
from portal.sync_lock import LOCK_TTL_SECONDS as LOCK_TTL_SECONDS  # re-exported: the lock was here before
from portal.sync_lock import AlreadyRunning as AlreadyRunning
from portal.sync_lock import MailboxLock
from portal.sync_lock import lock_key as lock_key
from portal.sync_lock import release_lock_of_run as release_lock_of_run
from portal.timeutil import utcnow

log = logging.getLogger(__name__)
MAX_BAD_LOG = 200


def choose_folders(folders: list[Folder]) -> list[Folder]:
    """Every selectable folder but Drafts, Junk and Trash; where \\All exists, that alone."""
    selectable = [f for f in folders if f.selectable]
    everything = [f for f in selectable if f.special_use == "\\All"]
    if everything:
        return everything[:1]
    return [f for f in selectable if f.special_use not in SKIP_SPECIAL_USE]


def run_sync(mailbox_id: int, *, trigger: str, requested_by_id: int | None = None,
             job_id: str | None = None, intervals: run_history.Intervals | None = None) -> SyncRun | None:
    """Sync one mailbox now. Returns the run, or None when there was nothing to do
    (mailbox gone, Problematic or disconnected). Raises AlreadyRunning if locked.

    A quiet poll (scheduled, nothing new, nothing to change) costs three statements: the
    mailbox with its owner and checkpoints, a guarded UPDATE of its times, and the day's
    quiet count. Its SyncRun is never stored. Anything else stores its run first."""
    mailbox = db.session.scalars(
        select(Mailbox).options(joinedload(Mailbox.owner), joinedload(Mailbox.checkpoints))
        .where(Mailbox.id == mailbox_id)).unique().one_or_none()
    if mailbox is None or not mailbox.is_syncable:
        return None
    lock = MailboxLock(mailbox_id).acquire()
    run = SyncRun(mailbox_id=mailbox_id, trigger=trigger, requested_by_id=requested_by_id, job_id=job_id,
                  ignored={}, bad_message_log=[], seen=0, logged=0, duplicates=0, bad_messages=0,
                  bytes_fetched=0, imap_commands=0, progress_done=0, progress_total=0,
                  started_at=utcnow(), heartbeat_at=utcnow(), status="running")
    if trigger != "scheduled" or mailbox.state == state.PENDING or mailbox.reason or mailbox.consecutive_failures:
        _keep(run, lock)  # asked for, first, or recovering: always worth a row
    session: ImapSession | None = None
    # A batch's commit would expire every loaded object, and the next batch would read the
    # mailbox, the run and the checkpoint again: three queries a batch for rows only this
    # run writes. _finish_success reads the mailbox afresh; a rollback expires all anyway.
    orm = db.session()
    expire_on_commit, orm.expire_on_commit = orm.expire_on_commit, False
    try:
        session = open_imap(mailbox)
        MailboxSync(mailbox, run, session, lock).sync()
        _finish_success(mailbox, run, session, lock, intervals)
    except Exception as exc:
        db.session.rollback()
        _finish_failure(mailbox, run, session, lock, exc)
        if not is_mail_fault(exc):
            raise  # a bug or a database fault: let RQ record it as failed too
    finally:
        orm.expire_on_commit = expire_on_commit
        if session is not None:
            session.close()
        lock.release()
    return run


def _keep(run: SyncRun, lock: MailboxLock) -> None:
    """Store the run (once): from now on it is history, and the lock names it."""
    if run.id is None:
        db.session.add(run)
        db.session.commit()
        lock.name_run(run)


def _finish_success(mailbox: Mailbox, run: SyncRun, session: ImapSession, lock: MailboxLock,
                    intervals: run_history.Intervals | None) -> None:
    now = utcnow()
    run.status = "succeeded"
    run.finished_at = run.heartbeat_at = now
    run.imap_commands = session.commands
    run.phase = None
    if run.id is None and run_history.is_quiet(run):
        # Nothing new and nothing to change: the mailbox's times and the day's count.
        next_in = run_history.next_sync_in(mailbox, intervals, quiet=True, now=now)
        if state.mark_polled(mailbox, next_in, now=now):
            run_history.count_quiet(mailbox.id, imap_commands=session.commands,
                                    seconds=(now - run.started_at).total_seconds(), at=now)
        db.session.commit()
        return
    _keep(run, lock)
    db.session.refresh(mailbox)  # its owner may have disconnected it, or support changed it, meanwhile
    state.mark_synced(mailbox, run_history.next_sync_in(mailbox, intervals, saw_mail=bool(run.seen), now=now))
    db.session.commit()


def _finish_failure(mailbox: Mailbox, run: SyncRun, session: ImapSession | None, lock: MailboxLock,
                    exc: Exception) -> None:
    classified = classify_exception(exc)
    if not is_mail_fault(exc):
        classified = type(classified)(reason="internal_error", refusal=False,
                                      detail=f"{type(exc).__name__}: {exc}"[:2000], retry_after=None)
    mailbox = db.session.get(Mailbox, mailbox.id)
    if run.id is None:
        run = db.session.merge(run)
    else:
        run = db.session.get(SyncRun, run.id)
    run.status = "failed"
    run.finished_at = run.heartbeat_at = utcnow()
    run.error_class = classified.reason
    run.error_detail = classified.detail
    run.imap_commands = session.commands if session else run.imap_commands
    state.record_failure(mailbox, classified)
    db.session.commit()


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
    def __init__(self, mailbox: Mailbox, run: SyncRun, session: ImapSession, lock: MailboxLock):
        self.mailbox, self.run, self.session, self.lock = mailbox, run, session, lock
        self.config = current_app.config
        self.postgresql = matching.dialect() == "postgresql"

    # Only a sync that has messages to decide needs these; a quiet poll never reads them.
    @cached_property
    def internal(self) -> set[str]:
        return matching.internal_addresses()

    @cached_property
    def own(self) -> set[str]:
        return matching.owner_addresses(self.mailbox)  # decide the direction (rules.message_direction)

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
        if not work:
            return  # a quiet poll: nothing to store
        _keep(self.run, self.lock)  # commits the new checkpoints with the run
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
        self.lock.extend()

    def _store_batch(self, folder: Folder, cp: FolderCheckpoint, records: list[HeaderRecord],
                     fetched_bodies: dict[int, bytes]) -> None:
        ignored = dict(self.run.ignored or {})
        pending: list[_Pending] = []
        in_window = [r for r in records if not matching.outside_window(self.mailbox, r)]
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
            tokens[record.uid], odd = scan_addresses(record.header)
            if odd:
                unusual.add(record.uid)
        primaries, deals = self._crm_for(set().union(*tokens.values()) if tokens else set())
        customer_addresses = {p.address for p in primaries}
        candidates = []
        for record in in_window:
            if tokens[record.uid] & customer_addresses or record.uid in unusual:
                candidates.append((record, parse.parse_headers(record.header)))
            else:
                reason = rules.reason_without_customer(record.flags, tokens[record.uid], self.mailbox.address,
                                                       self.internal)
                ignored[reason] = ignored.get(reason, 0) + 1
        hidden = set().union(*(h.all_addresses() for _, h in candidates)) - set().union(*tokens.values()) \
            if candidates else set()
        if hidden:
            more, more_deals = self._crm_for(hidden)
            primaries, deals = primaries + more, deals + more_deals
        for record, headers in candidates:
            decision = rules.decide(
                matching.message_facts(headers, record, folder), mailbox_address=self.mailbox.address,
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

    def _crm_for(self, addresses: set[str]):
        return matching.crm_facts_for(addresses)

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
        if item.decision.matches and item.decision.matches[0].direction == "out":
            # Seen first in another folder (INBOX) and now in this mailbox's Sent folder: the
            # mailbox sent it, so it is "out" on every customer this mailbox logged it on.
            for activity in email.activities:
                if activity.mailbox_id == self.mailbox.id and activity.direction != "out":
                    activity.direction = "out"
        matching.log_on_customers(email, item.decision.matches, self.mailbox.id)

    def _new_email(self, item: _Pending) -> Email:
        # The header fields come from the server's header extract the rules decided on, not
        # from a second parse of the same lines: a malformed header line can stop the
        # whole-message parse early, losing headers the extract still has.
        parsed = parse.parse_message(item.raw, headers=item.headers)
        self.run.bytes_fetched += len(item.raw)
        return matching.new_email(parsed, item.raw, key=item.key, internal_date=item.record.internal_date)

    def _bad(self, folder: Folder, uid: int, reason: str) -> None:
        self.run.bad_messages += 1
        entries = list(self.run.bad_message_log or [])
        if len(entries) < MAX_BAD_LOG:
            entries.append({"folder": folder.name, "uid": uid, "reason": reason[:500]})
        self.run.bad_message_log = entries
        log.warning("mailbox %s %s UID %s not stored: %s", self.mailbox.id, folder.name, uid, reason)
