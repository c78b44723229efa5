"""Real servers for tests, the demo and the benchmark: Dovecot (IMAP), Redis and an SMTP sink.

Plain classes, no pytest: each one starts a real process or thread on free loopback ports
from a temp folder and is stopped by its own pid.  The recipes follow shared/TESTBED.md.

    with Dovecot() as imap, RedisServer() as redis, SmtpSink({"alice@example.test": "pw"}) as smtp:
        imap.add_user("alice@example.test", "alicepw")
        imap.append("alice@example.test", "INBOX", make_message(from_=..., to=..., subject="Hi"))
"""

from __future__ import annotations

import atexit
import base64
import binascii
import contextlib
import email.policy
import email.utils
import errno
import itertools
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import weakref
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Callable, Iterable, Sequence

import imapclient
from imapclient import imap_utf7

__all__ = [
    "free_port",
    "Dovecot",
    "RedisServer",
    "SmtpSink",
    "WorkerProcess",
    "make_message",
    "ServerStartError",
]

HOST = "127.0.0.1"
MAIL_UID = MAIL_GID = 65534  # Dovecot refuses mail owned by root
START_TIMEOUT = 10.0

# Maildir info letters (after ":2,") for the system flags; Dovecot wants them sorted.
MAILDIR_FLAG_LETTERS = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}


_FLAG_LETTER_BY_LOWER = {k.lower(): v for k, v in MAILDIR_FLAG_LETTERS.items()}


class ServerStartError(RuntimeError):
    """A test server did not come up; the message carries the tail of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


def _find_binary(name: str) -> str:
    # /usr/sbin is not on every PATH (CI shells, sudo-less users).
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if not found:
        raise ServerStartError(
            f"{name} is not installed: run scripts/install-deps.sh "
            "(apt-get install dovecot-imapd dovecot-submissiond redis-server)"
        )
    return found


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _stop_process(proc: subprocess.Popen | None, grace: float = 5.0) -> None:
    """SIGTERM our child; after `grace` seconds SIGKILL its process group (we started it
    with start_new_session, so the group is the server and its own children only)."""
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    # Children left behind (Dovecot's log process, an imap process mid-command) share the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(5)


_running: "weakref.WeakSet" = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_running):
        with contextlib.suppress(Exception):
            server.close()  # stop, and remove the temp folder if it was ours


def _make_traversable(path: Path) -> None:
    """Let uid 65534 walk down to `path` (pytest's /tmp/pytest-of-root is 0700)."""
    path = path.resolve()
    for p in [path, *path.parents]:
        st = p.stat()
        if not st.st_mode & 0o001:
            os.chmod(p, st.st_mode | 0o001)


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


# --------------------------------------------------------------------------------------
# Dovecot
# --------------------------------------------------------------------------------------


class Dovecot:
    """A throwaway Dovecot (IMAP + IMAPS) in a temp folder, on two free loopback ports.

    Users live in passwd-files ({PLAIN}, one per user); mail in Maildir++ under
    `<root>/mail/<address>/Maildir`, owned by 65534.  stop()/start() keeps ports, users and
    mail; only base_dir is emptied.
    """

    host = HOST
    SPECIAL_USE = {"Drafts": "\\Drafts", "Sent": "\\Sent", "Junk": "\\Junk", "Trash": "\\Trash"}

    def __init__(self, root: Path | str | None = None, oauth2_introspection_url: str | None = None):
        self._own_root = root is None
        if root is None:
            root = tempfile.mkdtemp(prefix="eis-dovecot-")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.root = self.root.resolve()
        self.oauth2_introspection_url = oauth2_introspection_url
        self.imap_port, self.imaps_port = _free_ports(2)
        self.conf_path = self.root / "dovecot.conf"
        self.base_dir = self.root / "run"
        self.state_dir = self.root / "state"
        self.log_path = self.root / "dovecot.log"
        self.stderr_path = self.root / "dovecot.stderr"
        self.cert_path = self.root / "cert.pem"
        self.key_path = self.root / "key.pem"
        self.passwd_dir = self.root / "passwd.d"  # one passwd-file per user, see _write_user
        self.oauth2_conf_path = self.root / "dovecot-oauth2.conf.ext"
        self.mail_root = self.root / "mail"
        self.users: dict[str, str] = {}
        self._removed_users: set[str] = set()
        # Folders given a special use by create_folder(), beyond the four in SPECIAL_USE.
        self.extra_special_use: dict[str, str] = {}
        self.start_seconds: float | None = None  # how long the last start() took
        self._proc: subprocess.Popen | None = None
        self._prepared = False
        self._started_once = False

    # ---- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> "Dovecot":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> "Dovecot":
        if self.running:
            return self
        binary = _find_binary("dovecot")
        self._prepare()
        if not self._started_once and not self._ports_free():
            self._move_ports()
        elif not self._ports_free():
            raise ServerStartError(
                f"port {self.imap_port} or {self.imaps_port} is taken: cannot restart there"
            )
        for attempt in range(3):
            try:
                return self._start_once(binary)
            except ServerStartError as e:
                # The ports were free when picked in __init__; another test may have taken
                # one since.  Only a first start may move (a restart must keep its ports).
                if self._started_once or "Address already in use" not in str(e) or attempt == 2:
                    raise
                self._move_ports()
        raise AssertionError("unreachable")

    def _move_ports(self) -> None:
        self.imap_port, self.imaps_port = _free_ports(2)
        self.conf_path.write_text(self._config())

    def _ports_free(self) -> bool:
        for port in (self.imap_port, self.imaps_port):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Dovecot binds
                try:
                    s.bind((self.host, port))
                except OSError:
                    return False
        return True

    def _start_once(self, binary: str) -> "Dovecot":
        # Leftovers in base_dir give "Dovecot is already running" or a 5 s stall on first login.
        shutil.rmtree(self.base_dir, ignore_errors=True)
        self.base_dir.mkdir(mode=0o755)
        t0 = time.monotonic()
        with open(self.stderr_path, "ab") as err:
            self._proc = subprocess.Popen(
                [binary, "-F", "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        _running.add(self)
        try:
            self._wait_ready(t0 + START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        self._started_once = True
        return self

    def _wait_ready(self, deadline: float) -> None:
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerStartError(
                    f"dovecot exited with code {self._proc.returncode} on start\n{self.log_tail()}"
                )
            try:
                with socket.create_connection((self.host, self.imap_port), timeout=1) as s:
                    greeting = s.recv(512)
                if greeting.startswith(b"* OK"):
                    with socket.create_connection((self.host, self.imaps_port), timeout=1):
                        pass
                    if self._proc.poll() is None:
                        return
                    continue
                last_error = RuntimeError(f"unexpected greeting {greeting!r}")
            except OSError as e:
                last_error = e
            time.sleep(0.02)
        raise ServerStartError(
            f"dovecot did not answer on {self.host}:{self.imap_port} within {START_TIMEOUT:.0f} s "
            f"({last_error})\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Stop at once: connected clients see the connection drop.

        Dovecot's master takes ~1 s to exit on SIGTERM (its log process lingers) and waits
        forever for an imap process with a client, so after a short grace the group is killed.
        """
        proc, self._proc = self._proc, None
        _stop_process(proc, grace=0.2)
        _running.discard(self)
        if proc is not None:
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and self._port_open(self.imap_port):
                time.sleep(0.01)

    def _port_open(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=0.2):
                return True
        except OSError:
            return False

    def restart(self) -> "Dovecot":
        """Same ports, users and mail; fresh base_dir."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop and, if the temp folder was ours, remove it."""
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for path in (self.stderr_path, self.log_path):
            tail = _tail(path, lines)
            if tail:
                parts.append(f"--- {path.name} ---\n{tail}")
        return "\n".join(parts) or "(no log output)"

    # ---- configuration ---------------------------------------------------------------

    def _prepare(self) -> None:
        if self._prepared:
            return
        os.chmod(self.root, 0o755)
        _make_traversable(self.root)
        self.state_dir.mkdir(exist_ok=True)
        self.mail_root.mkdir(exist_ok=True)
        os.chown(self.mail_root, MAIL_UID, MAIL_GID)
        # The cert is valid 2 days (TESTBED recipe): remake it for a root kept longer.
        if not self.cert_path.exists() or time.time() - self.cert_path.stat().st_mtime > 86400:
            self._make_cert()
        self.passwd_dir.mkdir(mode=0o755, exist_ok=True)
        if self.oauth2_introspection_url:
            self.oauth2_conf_path.write_text(
                "introspection_mode = post\n"
                f"introspection_url = {self.oauth2_introspection_url}\n"
                "username_attribute = username\n"
                "active_attribute = active\n"
                "active_value = true\n"
            )
        self.conf_path.write_text(self._config())
        self._prepared = True

    def _make_cert(self) -> None:
        openssl = _find_binary("openssl")
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-keyout", str(self.key_path), "-out", str(self.cert_path)],
            check=True, capture_output=True,
        )
        os.chmod(self.key_path, 0o600)

    def _config(self) -> str:
        oauth = bool(self.oauth2_introspection_url)
        mailboxes = "".join(
            f"  mailbox {name} {{\n    special_use = {use}\n    auto = create\n  }}\n"
            for name, use in self.SPECIAL_USE.items()
        ) + "".join(
            f'  mailbox "{name}" {{\n    special_use = {use}\n  }}\n'
            for name, use in self.extra_special_use.items()
        )
        oauth_passdb = (
            "passdb {\n"
            "  driver = oauth2\n"
            "  mechanisms = xoauth2 oauthbearer\n"
            f"  args = {self.oauth2_conf_path}\n"
            "}\n"
        ) if oauth else ""
        return (
            f"base_dir = {self.base_dir}\n"
            f"state_dir = {self.state_dir}\n"
            "instance_name = eis-test\n"
            f"log_path = {self.log_path}\n"
            "protocols = imap\n"
            f"listen = {self.host}\n"
            "ssl = yes\n"
            f"ssl_cert = <{self.cert_path}\n"
            f"ssl_key = <{self.key_path}\n"
            "disable_plaintext_auth = no\n"
            "auth_failure_delay = 0\n"
            f"auth_mechanisms = plain login{' xoauth2 oauthbearer' if oauth else ''}\n"
            "mail_location = maildir:~/Maildir\n"
            f"mail_uid = {MAIL_UID}\n"
            f"mail_gid = {MAIL_GID}\n"
            # Test mail is throwaway; the sync service may open several connections per user.
            "mail_fsync = never\n"
            "protocol imap {\n"
            "  mail_max_userip_connections = 100\n"
            "}\n"
            "service anvil {\n"
            "  unix_listener anvil-auth-penalty {\n"
            "    mode = 0\n"
            "  }\n"
            "}\n"
            "namespace inbox {\n"
            "  inbox = yes\n"
            "  separator = /\n"
            f"{mailboxes}"
            "}\n"
            f"{oauth_passdb}"
            "passdb {\n"
            "  driver = passwd-file\n"
            "  mechanisms = plain login\n"
            f"  args = scheme=PLAIN username_format=%u {self.passwd_dir}/%u\n"
            "}\n"
            "userdb {\n"
            "  driver = static\n"
            # allow_all_users: doveadm USER lookups must not need a passdb (ours are per-mechanism)
            f"  args = home={self.mail_root}/%u allow_all_users=yes\n"
            "}\n"
            "service imap-login {\n"
            "  inet_listener imap {\n"
            f"    address = {self.host}\n"
            f"    port = {self.imap_port}\n"
            "  }\n"
            "  inet_listener imaps {\n"
            f"    address = {self.host}\n"
            f"    port = {self.imaps_port}\n"
            "    ssl = yes\n"
            "  }\n"
            "}\n"
        )

    # ---- users -----------------------------------------------------------------------

    # Dovecot stats a passwd-file at most once per second of its clock (passwd_file_sync():
    # `if (pw->last_sync_time == ioloop_time) return`), and then re-reads it only if its
    # whole-second mtime or size changed.  So: one file per user (a new user's file is read
    # at once), mtime moved forward on every rewrite, and after changing or removing a
    # user that may already have been looked up, wait for the next second.

    def passwd_file(self, address: str) -> Path:
        return self.passwd_dir / address

    def _write_user(self, address: str, password: str) -> None:
        path = self.passwd_file(address)
        old_mtime = path.stat().st_mtime if path.exists() else 0
        tmp = self.passwd_dir / f".{address}.tmp"
        tmp.write_text(f"{address}:{{PLAIN}}{password}::::::\n")
        os.chmod(tmp, 0o644)
        new_mtime = max(int(time.time()), int(old_mtime)) + 2
        os.utime(tmp, (new_mtime, new_mtime))
        tmp.replace(path)

    @staticmethod
    def _wait_next_second() -> None:
        second = int(time.time())
        while int(time.time()) <= second:
            time.sleep(max(0.001, second + 1 - time.time()))

    @staticmethod
    def _check_credentials(address: str, password: str) -> None:
        if not address or address.startswith(".") or "/" in address:
            raise ValueError(f"unusable address {address!r}")
        for value in (address, password):
            if any(c in value for c in ":\n\r"):
                raise ValueError("addresses and passwords may not contain ':' or line breaks")

    def home(self, address: str) -> Path:
        return self.mail_root / address

    def add_user(self, address: str, password: str) -> None:
        """Add (or re-add) a mailbox user; usable for login at once."""
        self._check_credentials(address, password)
        if self.users.get(address) == password:
            return None
        if address in self.users or address in self._removed_users:
            return self.set_password(address, password)
        self.passwd_dir.mkdir(mode=0o755, exist_ok=True)
        self.users[address] = password
        self._write_user(address, password)
        home = self.home(address)
        if not home.exists():
            home.mkdir(parents=True)
            os.chown(home, MAIL_UID, MAIL_GID)

    def set_password(self, address: str, password: str) -> None:
        """Change a user's password; returns once Dovecot is bound to see it (<= 1 s)."""
        self._check_credentials(address, password)
        if address not in self.users and address not in self._removed_users:
            raise KeyError(address)
        self.passwd_dir.mkdir(mode=0o755, exist_ok=True)
        self.users[address] = password
        self._removed_users.discard(address)
        self._write_user(address, password)
        self._wait_next_second()
        home = self.home(address)
        if not home.exists():
            home.mkdir(parents=True)
            os.chown(home, MAIL_UID, MAIL_GID)

    def remove_user(self, address: str, *, delete_mail: bool = False) -> None:
        """Remove a user's credentials (their mail stays unless delete_mail)."""
        self.users.pop(address, None)
        self._removed_users.add(address)
        with contextlib.suppress(FileNotFoundError):
            self.passwd_file(address).unlink()
        self._wait_next_second()
        if delete_mail:
            shutil.rmtree(self.home(address), ignore_errors=True)

    # ---- IMAP helpers ----------------------------------------------------------------

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

    def doveadm(self, *args: str) -> str:
        """Run `doveadm -c <conf> ARGS` (needs the server running for user lookups)."""
        binary = _find_binary("doveadm")
        proc = subprocess.run([binary, "-c", str(self.conf_path), *args],
                              capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"doveadm {' '.join(args)} failed ({proc.returncode}): "
                               f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

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


# --------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------


class RedisServer:
    """redis-server on a free loopback port, no persistence, in a temp folder."""

    host = HOST

    def __init__(self, root: Path | str | None = None, port: int | None = None):
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="eis-redis-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self._explicit_port = port is not None
        self.port = port or free_port()
        self.log_path = self.root / "redis.log"
        self.start_seconds: float | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> "RedisServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> "RedisServer":
        if self.running:
            return self
        binary = _find_binary("redis-server")
        self.root.mkdir(parents=True, exist_ok=True)  # stop() removed it if it was ours
        for attempt in range(3):
            if not self._explicit_port and not self._port_free():
                self.port = free_port()  # taken since __init__; a restart keeps a free port
            try:
                return self._start_once(binary)
            except ServerStartError as e:
                if self._explicit_port or "Address already in use" not in str(e) or attempt == 2:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _port_free(self) -> bool:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((self.host, self.port))
            except OSError:
                return False
        return True

    def _start_once(self, binary: str) -> "RedisServer":
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", self.host, "--save", "",
                 "--appendonly", "no", "--dir", str(self.root)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        _running.add(self)
        deadline = t0 + START_TIMEOUT
        # Ready when *our* process answers (another redis may hold the port we picked).
        while self._server_pid() != self._proc.pid:
            if self._proc.poll() is not None:
                self.stop()
                raise ServerStartError(f"redis-server exited on start\n{_tail(self.log_path)}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(
                    f"redis-server did not answer PING within {START_TIMEOUT:.0f} s\n"
                    f"{_tail(self.log_path)}"
                )
            time.sleep(0.01)
        self.start_seconds = time.monotonic() - t0
        return self

    def _server_pid(self) -> int | None:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as s:
                s.sendall(b"INFO server\r\n")
                data = b""
                while b"process_id:" not in data or not data.endswith(b"\r\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except OSError:
            return None
        m = re.search(rb"process_id:(\d+)", data)
        return int(m.group(1)) if m else None

    def ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def client(self, db: int = 0):
        import redis  # only the callers that want a client need the package

        return redis.Redis(host=self.host, port=self.port, db=db)

    def stop(self) -> None:
        """Stop; with no persistence there is nothing to keep, so our temp folder goes too."""
        proc, self._proc = self._proc, None
        _stop_process(proc)
        _running.discard(self)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def close(self) -> None:
        self.stop()


# --------------------------------------------------------------------------------------
# The product's own worker, as a process
# --------------------------------------------------------------------------------------


def environment_of(config, extra: dict | None = None) -> dict[str, str]:
    """The environment that gives `python worker.py` the same configuration as an app's
    config (the database, Redis, the keys and every EIS_ setting), as an operator sets it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EIS_")}
    values = {"DATABASE_URL": config.get("SQLALCHEMY_DATABASE_URI"), "REDIS_URL": config.get("REDIS_URL"),
              "SECRET_KEY": config.get("SECRET_KEY")}
    values.update({k: v for k, v in config.items() if k.startswith("EIS_")})
    values.update(extra or {})
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "1" if value else "0"
        elif isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        env[key] = str(value)
    return env


class WorkerProcess:
    """`python worker.py --no-scheduler` in its own process (RQ forks a work horse per job),
    ready once it has registered itself in Redis; stopped with SIGTERM, as systemd would."""

    def __init__(self, config, extra: dict | None = None, *, scheduler: bool = False):
        self.root = Path(tempfile.mkdtemp(prefix="eis-worker-"))
        self.name = f"test-worker-{os.getpid()}-{next(_worker_numbers)}"
        self.env = environment_of(config, {"EIS_INSTANCE_PATH": str(self.root), **(extra or {})})
        self.redis_url = self.env["REDIS_URL"]
        self.scheduler = scheduler
        self.log_path = self.root / "worker.log"
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "WorkerProcess":
        import redis  # only the callers that start a worker need the package

        args = [sys.executable, str(Path(__file__).resolve().parents[1] / "worker.py"), "--name", self.name]
        if not self.scheduler:
            args.append("--no-scheduler")
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(args, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          start_new_session=True, cwd=str(Path(__file__).resolve().parents[1]))
        _running.add(self)
        connection = redis.Redis.from_url(self.redis_url)
        deadline = time.monotonic() + timeout
        while not connection.sismember("rq:workers", f"rq:worker:{self.name}"):
            if self._proc.poll() is not None:
                raise ServerStartError(f"worker.py exited on start\n{_tail(self.log_path)}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(f"worker.py did not register within {timeout:.0f} s\n{_tail(self.log_path)}")
            time.sleep(0.05)
        return self

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        _stop_process(proc, grace=10.0)
        _running.discard(self)
        shutil.rmtree(self.root, ignore_errors=True)

    def close(self) -> None:
        self.stop()


_worker_numbers = itertools.count(1)


# --------------------------------------------------------------------------------------
# SMTP sink
# --------------------------------------------------------------------------------------


XOAUTH2_ERROR = '{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}'


class _SinkHandler:
    def __init__(self, sink: "SmtpSink"):
        self.sink = sink

    async def handle_DATA(self, server, session, envelope):
        with self.sink._lock:
            if self.sink._failures:
                self.sink._failures -= 1
                return f"{self.sink._fail_code} {self.sink._fail_text}"
            raw = bytes(envelope.original_content or envelope.content)
            self.sink.messages.append((envelope.mail_from, list(envelope.rcpt_tos), raw))
        return "250 2.0.0 OK: queued"

    async def auth_XOAUTH2(self, server, args):
        from aiosmtpd.smtp import MISSING, AuthResult

        if len(args) > 1:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        else:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        user, token = _parse_xoauth2(blob.decode("utf-8", "replace"))
        if user is not None and self.sink.token_checker(user, token):
            self.sink.logins.append(("XOAUTH2", user))
            return AuthResult(success=True, auth_data=user)
        # Like Gmail: a JSON error as a challenge, the client answers empty, then 535.
        reply = await server.challenge_auth(XOAUTH2_ERROR)
        if reply is MISSING:
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False,
                          message="535 5.7.8 Username and Password not accepted")


def _parse_xoauth2(text: str) -> tuple[str | None, str]:
    user, token = None, ""
    for part in text.split("\x01"):
        if part.startswith("user="):
            user = part[5:]
        elif part.lower().startswith("auth=bearer "):
            token = part[12:]
    return user, token


def _drop_plain_auth_notice(record: logging.LogRecord) -> bool:
    return "auth_require_tls == False" not in record.getMessage()


def _reject_all(user: str, token: str) -> bool:
    return False


class SmtpSink:
    """An aiosmtpd server that requires AUTH (PLAIN/LOGIN from `users`, XOAUTH2 via
    `token_checker`) and keeps what it receives in `.messages` as (mail_from, rcpt_tos, bytes)."""

    host = HOST

    def __init__(self, users: dict[str, str] | None = None,
                 token_checker: Callable[[str, str], bool] | None = None, port: int | None = None):
        self.users: dict[str, str] = dict(users or {})
        self.token_checker = token_checker or _reject_all
        self._explicit_port = port is not None
        self.port = port or free_port()
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.logins: list[tuple[str, str]] = []  # (mechanism, user) of each successful AUTH
        self._failures = 0
        self._fail_code = 451
        self._fail_text = "4.3.0 Try again later"
        self._lock = threading.Lock()
        self._controller = None

    def __enter__(self) -> "SmtpSink":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult

        login = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        if login in self.users and self.users[login] == password:
            self.logins.append((mechanism, login))
            return AuthResult(success=True, auth_data=login)
        return AuthResult(success=False, handled=False)

    def start(self) -> "SmtpSink":
        if self._controller is not None:
            return self
        from aiosmtpd.controller import Controller

        # Plain-text AUTH is the point of this sink; aiosmtpd warns and logs it per connection.
        warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS",
                                category=UserWarning)
        mail_log = logging.getLogger("mail.log")
        if _drop_plain_auth_notice not in mail_log.filters:
            mail_log.addFilter(_drop_plain_auth_notice)
        for attempt in range(3):
            controller = Controller(
                _SinkHandler(self), hostname=self.host, port=self.port,
                authenticator=self._authenticate, auth_required=True, auth_require_tls=False,
            )
            try:
                controller.start()
            except OSError as e:
                # the port picked in __init__ was taken since; a port given by the caller stays
                if self._explicit_port or e.errno != errno.EADDRINUSE or attempt == 2:
                    raise
                self.port = free_port()
                continue
            self._controller = controller
            return self
        raise AssertionError("unreachable")

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def fail_next(self, n: int = 1, code: int = 451, text: str = "4.3.0 Try again later") -> None:
        """The next n DATA commands answer `code text` instead of accepting."""
        with self._lock:
            self._failures, self._fail_code, self._fail_text = n, code, text

    def wait_for(self, count: int, timeout: float = 5.0) -> list[tuple[str, list[str], bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.messages)} of {count} messages arrived")
            time.sleep(0.01)
        return list(self.messages)

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()
            self.logins.clear()
            self._failures = 0


# --------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------


def _addresses(value) -> str:
    """'a@x', ('Name', 'a@x') or a list of those -> one header value."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, str) for v in value) \
            and "@" in value[1] and "@" not in value[0]:
        return email.utils.formataddr(value)
    return ", ".join(_addresses(v) for v in value)


def make_message(*, from_, to, cc=(), subject: str, body: str = "Hello",
                 message_id: str | None | bool = None, date: datetime | None = None,
                 html: str | None = None, attachments: Sequence[tuple] = (),
                 in_reply_to: str | None = None, references: str | Sequence[str] | None = None,
                 headers: dict[str, str] | None = None) -> bytes:
    """An RFC 5322 message (CRLF line ends).

    Addresses: 'Jiří Novák <jiri@example.test>', ('Jiří Novák', 'jiri@example.test') or lists.
    message_id: None makes one, False leaves the header out, a string is used as given.
    attachments: (filename, content_type, data) tuples.
    """
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = _addresses(from_)
    to_value = _addresses(to)
    if to_value:
        msg["To"] = to_value
    cc_value = _addresses(cc)
    if cc_value:
        msg["Cc"] = cc_value
    msg["Subject"] = subject
    msg["Date"] = email.utils.format_datetime(date or datetime.now().astimezone())
    if message_id is None:
        msg["Message-ID"] = email.utils.make_msgid(domain="example.test")
    elif message_id:
        msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = references if isinstance(references, str) else " ".join(references)
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    for filename, content_type, data in attachments:
        maintype, _, subtype = content_type.partition("/")
        if isinstance(data, str):
            data = data.encode()
        msg.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream",
                           filename=filename)
    return msg.as_bytes()
