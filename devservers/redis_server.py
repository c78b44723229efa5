"""redis-server for tests and the benchmark, on a free loopback port, with no persistence
unless asked for an append-only file (AOF), as a real deployment keeps its queues.
(Named redis_server so that `import redis` still finds the redis package.)"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from devservers.process import (
    HOST,
    START_TIMEOUT,
    ServerStartError,
    _find_binary,
    _running,
    _stop_process,
    _tail,
    free_port,
)


class RedisServer:
    """redis-server on a free loopback port, in a temp folder; no persistence, or an
    append-only file with `appendonly=True` (`appendfsync` as Redis's own: everysec)."""

    host = HOST

    def __init__(self, root: Path | str | None = None, port: int | None = None, *,
                 appendonly: bool = False, appendfsync: str = "everysec"):
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="eis-redis-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self._explicit_port = port is not None
        self.port = port or free_port()
        self.log_path = self.root / "redis.log"
        self.appendonly, self.appendfsync = appendonly, appendfsync
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
                 "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", self.appendfsync,
                 "--dir", str(self.root)],
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
        return redis.Redis(host=self.host, port=self.port, db=db)

    def kill(self) -> None:
        """SIGKILL, as a crash would: with no persistence, everything in it is lost. start()
        again on the same port (pass `port` to keep it for certain)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self.stop()

    def stop(self) -> None:
        """Stop; with no persistence there is nothing to keep, so our temp folder goes too."""
        proc, self._proc = self._proc, None
        _stop_process(proc)
        _running.discard(self)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def close(self) -> None:
        self.stop()
