"""The worker process: what it does before it forks work horses for jobs, and its RQ worker,
which outlives a Redis outage (worker.py runs it)."""
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable

import redis.exceptions
from redis import Redis
from rq import Worker, worker_registration
from rq.exceptions import StopRequested
from sqlalchemy.orm import configure_mappers

# Imported here so that every work horse inherits them, parsed and frozen.
import portal.jobs.schedule  # noqa: F401
import portal.jobs.send  # noqa: F401
import portal.jobs.sync  # noqa: F401
import portal.jobs.webhooks  # noqa: F401
from portal.queue import QUEUES

log = logging.getLogger(__name__)
REDIS_LOST = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
LONGEST_WAIT_SECONDS = 30  # between two tries to reach Redis while it is away
HORSE_GRACE_SECONDS = 30  # a job left running when the work loop broke: time to let it end


def prepare_worker_process() -> None:
    """Before a worker forks its first job: import what the jobs use, then move every
    object that exists now out of the garbage collector's sight (gc.freeze, as the Python
    docs advise before fork()). The jobs' collections then no longer walk the app's
    hundreds of thousands of long-lived objects: a 20,000-message back-fill spent 0.15 s
    in the collector, 0.04 s after (bench/sync.py). Forked children also keep sharing those
    memory pages instead of copying them when the collector touches them."""
    configure_mappers()
    gc.collect()
    gc.freeze()


class EisWorker(Worker):
    """RQ's worker, for a Redis that may go away and come back without its data.

    While idle, RQ retries a lost Redis by itself; here it tries again every few seconds at
    most (not RQ's minute), and its heartbeat notices when Redis came back empty (restarted
    without persistence) and registers the worker again, so it still counts as alive."""

    max_connection_wait_time = 5.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stop_asked = False
        self._redis_lost_at: float | None = None

    def request_stop(self, signum, frame):
        self.stop_asked = True  # SIGTERM/SIGINT: leave for good, not for a restart
        super().request_stop(signum, frame)

    def heartbeat(self, timeout: int | None = None, pipeline=None):
        if pipeline is not None:
            return super().heartbeat(timeout, pipeline=pipeline)
        # One round trip (RQ's own heartbeat makes three), which also tells whether the
        # worker's key survived.
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.exists(self.key)
            super().heartbeat(timeout, pipeline=pipe)
            try:
                existed = pipe.execute()[0]
            except REDIS_LOST as exc:
                if self._redis_lost_at is None:
                    self._redis_lost_at = time.monotonic()
                    log.error("worker %s: Redis is unreachable (%s); waiting for it, the worker keeps running",
                              self.name, exc)
                raise
        if self._redis_lost_at is not None:
            log.warning("worker %s: Redis answers again after %.0f s", self.name,
                        time.monotonic() - self._redis_lost_at)
            self._redis_lost_at = None
        if not existed and self.birth_date is not None:
            self._register_again()

    def _register_again(self) -> None:
        log.warning("worker %s: Redis lost the worker's registration (restarted without its data); "
                    "registering again", self.name)
        with self.connection.pipeline() as pipe:
            pipe.hset(self.key, mapping=self.serialize())
            pipe.expire(self.key, self.worker_ttl + 60)
            worker_registration.register(self, pipe)
            pipe.execute()


def work_until_stopped(connection: Redis, *, name: str | None = None, burst: bool = False,
                       logging_level: str = "INFO", before_restart: Callable[[], None] | None = None) -> int:
    """Run an EisWorker until it is asked to stop (SIGTERM) or, with `burst`, the queues are
    empty. When RQ's work loop ends any other way (Redis lost in the middle of a job, or a
    time-out: RQ then quits), wait until Redis answers, with back-off, and start a fresh
    worker: a worker never exits because Redis or the database was away for a while."""
    stop = threading.Event()  # SIGTERM/SIGINT between two workers (RQ's own handlers during one)
    quick_failures = 0
    while True:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        if stop.is_set():
            return 0
        worker: EisWorker | None = None
        started = time.monotonic()
        try:
            worker = EisWorker(list(QUEUES), connection=connection, name=name)
            if stop.is_set():
                return 0
            worker.work(burst=burst, logging_level=logging_level)
            if burst or worker.stop_asked:
                return 0
            log.error("worker %s: RQ's work loop ended by itself; starting a fresh worker", worker.name)
        except StopRequested:
            return 0
        except Exception as exc:
            if burst:
                raise
            log.error("worker %s: the work loop stopped (%s: %s); starting a fresh worker once Redis answers",
                      getattr(worker, "name", name), type(exc).__name__, exc)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        if stop.is_set() or (worker is not None and worker.stop_asked):
            return 0
        quick_failures = quick_failures + 1 if time.monotonic() - started < 60 else 1
        if not _wait_for_redis(connection, stop, first_delay=min(2 ** (quick_failures - 1), 30)):
            return 0
        _let_go_of(worker)
        if before_restart is not None:
            before_restart()


def _wait_for_redis(connection: Redis, stop: threading.Event, first_delay: float) -> bool:
    """Block until Redis answers PING (True) or a stop is asked (False)."""
    delay, since = first_delay, time.monotonic()
    while not stop.wait(delay):
        try:
            connection.ping()
            return True
        except redis.exceptions.RedisError as exc:
            log.error("Redis still unreachable after %.0f s (%s); trying again in %.0f s",
                      time.monotonic() - since, exc, min(delay * 2, LONGEST_WAIT_SECONDS))
            delay = min(delay * 2, LONGEST_WAIT_SECONDS)
    return False


def _let_go_of(worker: EisWorker | None) -> None:
    """What the old worker left: a job still running in its horse (let it end, for a while)
    and its registration (marked dead, so that a worker of the same name may start)."""
    if worker is None:
        return
    horse = worker.horse_pid
    deadline = time.monotonic() + HORSE_GRACE_SECONDS
    while horse:
        try:
            done, _status = os.waitpid(horse, os.WNOHANG)
        except ChildProcessError:
            break
        if done:
            break
        if time.monotonic() > deadline:
            log.warning("worker %s: its job (pid %s) still runs; starting a fresh worker beside it",
                        worker.name, horse)
            break
        time.sleep(0.2)
    try:
        worker.unsubscribe()
        worker.register_death()
    except redis.exceptions.RedisError:
        log.warning("worker %s: could not mark the old worker dead in Redis", worker.name, exc_info=True)
