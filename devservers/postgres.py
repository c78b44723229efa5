"""A private PostgreSQL cluster for tests that stop and start it (a fault test must not
restart the machine's shared server): initdb into a temp folder, on a free loopback port.

initdb and postgres refuse to run as root, so as root the binaries run as the `postgres`
user (runuser), and the folder is theirs. The binaries come from /usr/lib/postgresql/<n>/bin
(Debian's layout; the newest installed) or PATH, or EIS_PG_BIN.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from devservers.process import HOST, ServerStartError, _running, _tail, free_port


def _bin_dir() -> Path:
    explicit = os.environ.get("EIS_PG_BIN")
    if explicit:
        return Path(explicit)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise ServerStartError("PostgreSQL's server binaries (initdb, pg_ctl) are not installed: "
                           "apt-get install postgresql, or set EIS_PG_BIN")


class PostgresServer:
    """PostgreSQL on a free loopback port, trust authentication, user `postgres`, fsync off."""

    host = HOST

    def __init__(self, root: Path | str | None = None, port: int | None = None):
        self._own_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="eis-postgres-")).resolve()
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log_path = self.root / "postgres.log"
        self.port = port or free_port()
        self.bin = _bin_dir()
        self._as_root = os.geteuid() == 0

    @property
    def url(self) -> str:
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/{name}"

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self, *args: str, timeout: float = 60) -> str:
        command = [str(self.bin / args[0]), *args[1:]]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if done.returncode != 0:
            raise ServerStartError(f"{' '.join(args[:2])} failed ({done.returncode}): "
                                   f"{done.stdout[-1500:]}{done.stderr[-1500:]}\n{_tail(self.log_path)}")
        return done.stdout

    def _prepare(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if self._as_root:
            user = pwd.getpwnam("postgres")
            # The postgres user must reach its folder: every parent traversable, the folder its own.
            for parent in self.root.parents:
                st = parent.stat()
                if not st.st_mode & 0o001:
                    os.chmod(parent, st.st_mode | 0o001)
            for path in (self.root, self.socket_dir):
                os.chown(path, user.pw_uid, user.pw_gid)
            os.chmod(self.root, 0o755)
        self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "--no-sync",
                  "-E", "UTF8", "--locale=C.UTF-8")

    def start(self) -> "PostgresServer":
        """Start (initdb the first time); returns once it accepts connections."""
        self._prepare()
        options = (f"-p {self.port} -c listen_addresses={self.host} -k {self.socket_dir} "
                   "-c fsync=off -c full_page_writes=off -c synchronous_commit=off")
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-w", "-t", "30",
                  "-o", options, "start")
        _running.add(self)
        return self

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    @property
    def running(self) -> bool:
        pid = self.pid
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop: "fast" disconnects clients and shuts down cleanly, "immediate" is a crash
        (recovery at the next start)."""
        if not self.running:
            return
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "30", "stop")
        _running.discard(self)

    def restart(self, mode: str = "fast", down_seconds: float = 0.0) -> "PostgresServer":
        self.stop(mode)
        time.sleep(down_seconds)
        return self.start()

    def close(self) -> None:
        """Stop (killing it if it will not stop) and remove the folder if it was ours."""
        with contextlib.suppress(Exception):
            self.stop("immediate")
        pid = self.pid
        if pid is not None and self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _running.discard(self)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
