"""A throwaway Dovecot (IMAP + IMAPS) for tests, the demo and the benchmark: its process,
its configuration and its users.  Putting mail into it is devservers.dovecot_mail."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from devservers.dovecot_mail import MAIL_GID, MAIL_UID, DovecotMail
from devservers.process import (
    HOST,
    START_TIMEOUT,
    ServerStartError,
    _find_binary,
    _free_ports,
    _running,
    _stop_process,
    _tail,
)


def _make_traversable(path: Path) -> None:
    """Let uid 65534 walk down to `path` (pytest's /tmp/pytest-of-root is 0700)."""
    path = path.resolve()
    for p in [path, *path.parents]:
        st = p.stat()
        if not st.st_mode & 0o001:
            os.chmod(p, st.st_mode | 0o001)


class Dovecot(DovecotMail):
    """A throwaway Dovecot (IMAP + IMAPS) in a temp folder, on two free loopback ports.

    Users live in passwd-files ({PLAIN}, one per user); mail in Maildir++ under
    `<root>/mail/<address>/Maildir`, owned by 65534.  stop()/start() keeps ports, users and
    mail; only base_dir is emptied.

    By default Dovecot runs as it does out of the box, in its "high-security" mode: a new
    imap-login process and a new imap process for every connection. `performance=True`
    (settable before a start or restart) is the "high-performance" mode Dovecot documents
    for busy servers: long-lived login processes, one per core, kept ready
    (`service_count = 0`, `process_min_avail`), and imap processes reused for up to 1,000
    sessions (`service_count = 1000`; safe here: every user's mail has the same uid).
    """

    host = HOST
    SPECIAL_USE = {"Drafts": "\\Drafts", "Sent": "\\Sent", "Junk": "\\Junk", "Trash": "\\Trash"}

    def __init__(self, root: Path | str | None = None, oauth2_introspection_url: str | None = None, *,
                 performance: bool = False):
        self._own_root = root is None
        if root is None:
            root = tempfile.mkdtemp(prefix="eis-dovecot-")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.root = self.root.resolve()
        self.oauth2_introspection_url = oauth2_introspection_url
        self.performance = performance
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
        self.conf_path.write_text(self._config())  # `performance` may have changed since
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
            f"{self._performance_config()}"
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

    def _performance_config(self) -> str:
        if not self.performance:
            return ""
        return (
            "service imap-login {\n"
            "  service_count = 0\n"
            f"  process_min_avail = {os.cpu_count() or 1}\n"
            "}\n"
            "service imap {\n"
            "  service_count = 1000\n"
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

    # ---- administration --------------------------------------------------------------

    def doveadm(self, *args: str) -> str:
        """Run `doveadm -c <conf> ARGS` (needs the server running for user lookups)."""
        binary = _find_binary("doveadm")
        proc = subprocess.run([binary, "-c", str(self.conf_path), *args],
                              capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"doveadm {' '.join(args)} failed ({proc.returncode}): "
                               f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout
