"""Child processes on loopback ports: free ports, finding a server's binary, stopping a
server by its own pid and process group, and stopping whatever is left at exit."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import weakref
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT = 10.0


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
