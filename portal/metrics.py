"""Counters the jobs write as they run, kept in Redis for /metrics to read at scrape time.

A job opens `observe_job(kind)`; the counts made inside it (`count_sync_failure`,
`count_emails_logged`, `count_poll`, `count_sync_run`) are gathered in memory and written with
the job's duration in one Redis pipeline when it ends. Outside a job each count is written at
once. A Redis error is logged and the numbers lost: a metric never fails a job.

Why Redis and not prometheus_client's own counters: RQ runs each job in a forked work horse
that exits when the job ends, so counters in process memory die with it (multiprocess mode
would need a shared directory and the cleaning of dead pids' files). Redis outlives them all.

Keys (hashes; counters only grow, as Prometheus counters do):
  eis:metrics:job_seconds:<kind>  bucket upper bound -> jobs in that bucket (not cumulative),
                                  plus "count", "sum" and "errors"
  eis:metrics:sync_failures       reason -> failed syncs
  eis:metrics:counts              "emails_logged", "polls_quiet", "polls_new_mail"
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from portal.queue import get_redis

log = logging.getLogger(__name__)

PREFIX = "eis:metrics:"
JOB_KINDS_KEY = PREFIX + "job_kinds"  # the set of kinds seen, so a scrape finds their hashes
FAILURES_KEY = PREFIX + "sync_failures"
COUNTS_KEY = PREFIX + "counts"
# Upper bounds (seconds) of the job-duration histogram: a quiet poll is tens of milliseconds,
# a first back-fill can take most of an hour (the sync job's time-out).
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


def job_key(kind: str) -> str:
    return PREFIX + "job_seconds:" + kind


def bucket_name(seconds: float) -> str:
    """The field of the first bucket the duration fits in ("+Inf" past the last)."""
    for bound in DURATION_BUCKETS:
        if seconds <= bound:
            return repr(float(bound))
    return "+Inf"


@dataclass
class _Pending:
    failures: Counter = field(default_factory=Counter)
    counts: Counter = field(default_factory=Counter)


_pending: ContextVar[_Pending | None] = ContextVar("eis_metrics_pending", default=None)


@contextmanager
def observe_job(kind: str):
    """Time the job; write its duration, whether it raised, and the counts made inside it in one
    pipeline when it ends. Never raises for Redis, never hides the job's own exception."""
    pending = _Pending()
    token = _pending.set(pending)
    started = time.perf_counter()
    failed = True
    try:
        yield
        failed = False
    finally:
        _pending.reset(token)
        _write(pending, job=(kind, time.perf_counter() - started, failed))


def count_sync_failure(reason: str | None) -> None:
    """A sync that failed, by its reason (DESIGN.md's reasons; internal_error for a bug)."""
    _count(failures={reason or "internal_error": 1})


def count_emails_logged(n: int) -> None:
    if n:
        _count(counts={"emails_logged": int(n)})


def count_poll(quiet: bool) -> None:
    """A sync that succeeded: quiet when it found nothing new in the mailbox."""
    _count(counts={"polls_quiet" if quiet else "polls_new_mail": 1})


def count_sync_run(run) -> None:
    """All of a finished SyncRun's counts: a failure by its reason, or a poll (quiet when it saw
    nothing new), and the emails it logged."""
    if run.status == "failed":
        count_sync_failure(run.error_class)
    elif run.status == "succeeded":
        count_poll(quiet=not run.seen and not run.logged)
    count_emails_logged(run.logged or 0)


def _count(failures: dict | None = None, counts: dict | None = None) -> None:
    pending = _pending.get()
    if pending is not None:  # inside a job: written with its duration, in one pipeline
        pending.failures.update(failures or {})
        pending.counts.update(counts or {})
        return
    _write(_Pending(Counter(failures or {}), Counter(counts or {})))


def _write(pending: _Pending, job: tuple[str, float, bool] | None = None) -> None:
    if job is None and not pending.failures and not pending.counts:
        return
    try:
        pipe = get_redis().pipeline(transaction=False)
        if job is not None:
            kind, seconds, failed = job
            key = job_key(kind)
            pipe.sadd(JOB_KINDS_KEY, kind)
            pipe.hincrby(key, bucket_name(seconds), 1)
            pipe.hincrby(key, "count", 1)
            pipe.hincrbyfloat(key, "sum", seconds)
            if failed:
                pipe.hincrby(key, "errors", 1)
        for reason, n in pending.failures.items():
            pipe.hincrby(FAILURES_KEY, reason, n)
        for name, n in pending.counts.items():
            pipe.hincrby(COUNTS_KEY, name, n)
        pipe.execute()
    except (RedisError, OSError):
        log.warning("could not write the job's metrics to Redis", exc_info=True)


# -- reading, for /metrics ----------------------------------------------------------------------
@dataclass
class JobDurations:
    kind: str
    buckets: list[tuple[float, int]]  # (upper bound, jobs at or under it), +Inf last
    count: int
    sum: float
    errors: int


@dataclass
class Counters:
    jobs: list[JobDurations] = field(default_factory=list)
    sync_failures: dict[str, int] = field(default_factory=dict)
    emails_logged: int = 0
    polls: dict[str, int] = field(default_factory=dict)  # "quiet" / "new_mail" -> n


def read_counters() -> Counters:
    """Everything the jobs counted, in one pipeline. Raises RedisError when Redis is away."""
    redis = get_redis()
    kinds = sorted(k.decode() if isinstance(k, bytes) else k for k in redis.smembers(JOB_KINDS_KEY))
    pipe = redis.pipeline(transaction=False)
    for kind in kinds:
        pipe.hgetall(job_key(kind))
    pipe.hgetall(FAILURES_KEY)
    pipe.hgetall(COUNTS_KEY)
    *job_hashes, failures, counts = [_decoded(h) for h in pipe.execute()]
    result = Counters(sync_failures={k: int(v) for k, v in failures.items()},
                      emails_logged=int(counts.get("emails_logged", 0)),
                      polls={"quiet": int(counts.get("polls_quiet", 0)),
                             "new_mail": int(counts.get("polls_new_mail", 0))})
    for kind, fields in zip(kinds, job_hashes):
        running, buckets = 0, []
        for bound in DURATION_BUCKETS:
            running += int(fields.get(repr(float(bound)), 0))
            buckets.append((float(bound), running))
        count = int(fields.get("count", 0))
        buckets.append((float("inf"), count))
        result.jobs.append(JobDurations(kind=kind, buckets=buckets, count=count,
                                        sum=float(fields.get("sum", 0.0)), errors=int(fields.get("errors", 0))))
    return result


def _decoded(mapping: dict) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in mapping.items()}
