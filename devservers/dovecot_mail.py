"""The mail in a Dovecot's mailboxes: putting messages in (IMAP APPEND and MULTIAPPEND, or
Maildir files written straight to disk, which is much faster), folders, UIDVALIDITY and
STATUS.  DovecotMail is mixed into devservers.dovecot.Dovecot, which gives it the server:
`host`, `imap_port`, `users`, `home()`, `doveadm()`, the configuration and the process."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path

import imapclient
from imapclient import imap_utf7

from devservers.process import START_TIMEOUT, ServerStartError

MAIL_UID = MAIL_GID = 65534  # Dovecot refuses mail owned by root

# Maildir info letters (after ":2,") for the system flags; Dovecot wants them sorted.
MAILDIR_FLAG_LETTERS = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}


_FLAG_LETTER_BY_LOWER = {k.lower(): v for k, v in MAILDIR_FLAG_LETTERS.items()}


def _as_timestamp(when: datetime | float | int | None) -> float:
    if when is None:
        return time.time()
    if isinstance(when, datetime):
        return when.timestamp()  # naive = local time, as imapclient's APPEND does
    return float(when)


def _maildir_letters(flags: str | Iterable[str | bytes] | None) -> str:
    """'SD' or ('\\Seen', '\\Draft') -> 'DS' (sorted, as Dovecot writes them)."""
    if not flags:
        return ""
    if isinstance(flags, str):
        letters = set(flags)
        bad = letters - set(MAILDIR_FLAG_LETTERS.values())
        if bad:
            raise ValueError(f"unsupported Maildir flag letters {sorted(bad)} (use D F R S T)")
        return "".join(sorted(letters))
    letters = set()
    for flag in flags:
        name = flag.decode() if isinstance(flag, bytes) else flag
        try:
            letters.add(_FLAG_LETTER_BY_LOWER[name.lower()])
        except KeyError:
            raise ValueError(f"write_maildir supports only system flags, not {name!r}") from None
    return "".join(sorted(letters))


def _imap_flags(flags) -> tuple:
    """Accept IMAP flags as a sequence or Maildir letters 'DS'."""
    if not flags:
        return ()
    if isinstance(flags, str) and set(flags) <= set(MAILDIR_FLAG_LETTERS.values()):
        letter_to_flag = {v: k for k, v in MAILDIR_FLAG_LETTERS.items()}
        return tuple(letter_to_flag[c] for c in flags)
    if isinstance(flags, (str, bytes)):
        return (flags,)
    return tuple(flags)


def _parse_uid_set(text: str) -> list[int]:
    uids: list[int] = []
    for part in text.split(","):
        if ":" in part:
            a, b = (int(x) for x in part.split(":"))
            uids.extend(range(min(a, b), max(a, b) + 1))
        else:
            uids.append(int(part))
    return uids


# Last (secs, usecs) used in a Maildir file name by this process: names stay unique and
# sort in write order even across instances sharing a folder.
_maildir_key = (0, 0)
_maildir_lock = threading.Lock()

_APPENDUID = re.compile(rb"\[APPENDUID (\d+) ([\d:,]+)\]")


class DovecotMail:
    """Messages and folders of a Dovecot's users, for tests to set up and inspect."""

    def client(self, address: str, password: str | None = None, *,
               timeout: float = 10) -> imapclient.IMAPClient:
        """A logged-in IMAPClient over the plaintext port; the caller logs out."""
        c = imapclient.IMAPClient(self.host, port=self.imap_port, ssl=False, timeout=timeout)
        try:
            c.login(address, self.users[address] if password is None else password)
        except BaseException:
            with contextlib.suppress(Exception):
                c.shutdown()
            raise
        return c

    @contextlib.contextmanager
    def _session(self, address: str):
        c = self.client(address)
        try:
            yield c
        finally:
            with contextlib.suppress(Exception):
                c.logout()

    def append(self, address: str, folder: str, message_bytes: bytes, *,
               flags: Sequence[str] = (), when: datetime | None = None) -> int | None:
        """APPEND one message; returns its UID (from UIDPLUS APPENDUID)."""
        with self._session(address) as c:
            resp = c.append(folder, message_bytes, _imap_flags(flags), msg_time=when)
        m = _APPENDUID.search(resp if isinstance(resp, bytes) else str(resp).encode())
        return int(m.group(2)) if m else None

    def multiappend(self, address: str, folder: str,
                    messages: Iterable[tuple[bytes, Sequence[str] | None, datetime | None]],
                    *, batch_size: int = 1000) -> list[int]:
        """MULTIAPPEND (RFC 3502) in batches; returns the UIDs in order."""
        uids: list[int] = []
        batch: list[dict] = []

        def flush(c):
            if not batch:
                return
            resp = c.multiappend(folder, batch)
            m = _APPENDUID.search(resp if isinstance(resp, bytes) else str(resp).encode())
            if m:
                uids.extend(_parse_uid_set(m.group(2).decode()))
            batch.clear()

        with self._session(address) as c:
            for item in messages:
                msg, flags, when = (tuple(item) + (None, None))[:3]
                entry = {"msg": msg}
                if flags:
                    entry["flags"] = _imap_flags(flags)
                if when is not None:
                    entry["date"] = when
                batch.append(entry)
                if len(batch) >= batch_size:
                    flush(c)
            flush(c)
        return uids

    def maildir_path(self, address: str, folder: str) -> Path:
        """Where `folder` lives on disk: Maildir++ ('A/B' -> Maildir/.A.B, names in mUTF-7)."""
        root = self.home(address) / "Maildir"
        if folder.upper() == "INBOX":
            return root
        if "." in folder:
            raise ValueError("Maildir++ uses '.' as its hierarchy separator: pick another name")
        encoded = imap_utf7.encode(folder)
        encoded = encoded.decode() if isinstance(encoded, bytes) else encoded
        return root / ("." + encoded.replace("/", "."))

    def write_maildir(self, address: str, folder: str,
                      messages: Iterable[tuple[bytes, str | Sequence[str] | None,
                                               datetime | float | None]]) -> list[Path]:
        """Write messages straight into Maildir files (fast: no IMAP).

        The file's mtime is its INTERNALDATE; flags are letters after ':2,' (D F R S T) or IMAP
        system flags. File names sort in list order, so Dovecot gives UIDs in list order.
        """
        home = self.home(address)
        root = home / "Maildir"
        target = self.maildir_path(address, folder)
        created: list[Path] = []
        for d in (home, root, *(root / s for s in ("cur", "new", "tmp")),
                  target, *(target / s for s in ("cur", "new", "tmp"))):
            if not d.exists():
                d.mkdir(mode=0o700)
                created.append(d)
        if target != root and not (target / "maildirfolder").exists():
            (target / "maildirfolder").touch()
            created.append(target / "maildirfolder")
        for path in created:
            os.chown(path, MAIL_UID, MAIL_GID)

        written: list[Path] = []
        pid = os.getpid()
        global _maildir_key
        with _maildir_lock:
            secs, usecs = _maildir_key
            for item in messages:
                data, flags, when = (tuple(item) + (None, None))[:3]
                data = bytes(data)
                ts = _as_timestamp(when)
                now = int(time.time())
                if now > secs:
                    secs, usecs = now, 0
                else:
                    usecs += 1
                    if usecs >= 1_000_000:
                        secs, usecs = secs + 1, 0
                # Dovecot assigns UIDs to new files sorted by the time in their name.
                vsize = len(data) + data.count(b"\n") - data.count(b"\r\n")
                base = f"{secs}.M{usecs}P{pid}.eis-test,S={len(data)},W={vsize}"
                # tmp/ then rename into cur/, as Maildir wants: Dovecot never sees half a file.
                tmp_path = f"{target}/tmp/{base}"
                fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fchown(fd, MAIL_UID, MAIL_GID)
                    os.utime(fd, (ts, ts))
                finally:
                    os.close(fd)
                final = target / "cur" / f"{base}:2,{_maildir_letters(flags)}"
                os.rename(tmp_path, final)
                written.append(final)
            _maildir_key = (secs, usecs)
        return written

    def create_folder(self, address: str, name: str, special_use: str | None = None) -> None:
        """CREATE over IMAP.  Dovecot 2.3 ignores RFC 6154 CREATE (USE ...) and refuses
        SETMETADATA /private/specialuse, so a special use goes into the config (for every
        user) and the server reloads; this returns once LIST shows the flag."""
        if special_use:
            self.extra_special_use[name] = special_use
            if self._prepared:
                self.conf_path.write_text(self._config())
            if self.running:
                self._proc.send_signal(signal.SIGHUP)
        with self._session(address) as c:
            if not c.folder_exists(name):
                c.create_folder(name)
        if special_use and self.running:
            deadline = time.monotonic() + START_TIMEOUT
            wanted = special_use.encode().lower()
            while wanted not in {f.lower() for f in self._list_flags(address, name)}:
                if time.monotonic() > deadline:
                    raise ServerStartError(
                        f"dovecot did not pick up {special_use} on {name}\n{self.log_tail()}"
                    )
                time.sleep(0.05)

    def _list_flags(self, address: str, name: str) -> tuple[bytes, ...]:
        with self._session(address) as c:
            for flags, _sep, folder in c.list_folders("", name):
                if folder == name:
                    return tuple(flags)
        return ()

    def delete_folder(self, address: str, name: str) -> None:
        with self._session(address) as c:
            c.delete_folder(name)

    def expunge(self, address: str, folder: str, uids: Iterable[int]) -> None:
        uids = list(uids)
        if not uids:
            return
        with self._session(address) as c:
            c.select_folder(folder)
            c.add_flags(uids, [imapclient.DELETED], silent=True)
            c.uid_expunge(uids)

    def set_uidvalidity(self, address: str, folder: str, value: int | None = None, *,
                        recreate: bool = False) -> int:
        """Change a folder's UIDVALIDITY; returns the new value.

        Default: `doveadm mailbox update --uid-validity VALUE` (keeps the messages; works on
        INBOX too).  recreate=True: DELETE + CREATE over IMAP (empties the folder; not INBOX),
        then, if a value is given, set it with doveadm.
        """
        if recreate:
            if folder.upper() == "INBOX":
                raise ValueError("INBOX cannot be deleted: use the doveadm way")
            self.delete_folder(address, folder)
            self.create_folder(address, folder)
        if value is not None:
            self.doveadm("mailbox", "update", "-u", address,
                         "--uid-validity", str(int(value)), folder)
        elif not recreate:
            raise ValueError("give a value, or recreate=True")
        return self.folder_status(address, folder)["UIDVALIDITY"]

    def folder_status(self, address: str, folder: str) -> dict[str, int]:
        """STATUS as {"MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ"} -> int."""
        with self._session(address) as c:
            st = c.folder_status(
                folder, ["MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ"]
            )
        return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in st.items()}
