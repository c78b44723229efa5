"""The product's own worker (`python worker.py`) as a separate process, configured through
the environment from an app's config, as an operator would run it."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from devservers.process import ServerStartError, _running, _stop_process, _tail

# worker.py is not in the package: this is the checkout's own (devservers is installed
# editable, so the checkout is the parent of this folder).
REPO_ROOT = Path(__file__).resolve().parents[1]


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
        args = [sys.executable, str(REPO_ROOT / "worker.py"), "--name", self.name]
        if not self.scheduler:
            args.append("--no-scheduler")
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(args, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          start_new_session=True, cwd=str(REPO_ROOT))
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

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def kill(self) -> None:
        """SIGKILL the worker and the job it runs, as a crash of the machine would. RQ runs a
        job in a work horse with a process group of its own: the worker is stopped first so
        that it cannot see its horse die and tidy up, then each child, then its group. The
        log stays (log_tail); stop() removes it."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGSTOP)
        children = children_of(proc.pid)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        _stop_process(proc, grace=10.0)
        _running.discard(self)
        shutil.rmtree(self.root, ignore_errors=True)

    def close(self) -> None:
        self.stop()


_worker_numbers = itertools.count(1)


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc); the tests use it to find work horses."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found
