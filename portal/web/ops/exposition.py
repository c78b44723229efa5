"""/metrics in Prometheus's text format: a collector that reads the database and Redis when it
is scraped.

Why not prometheus_client's multiprocess mode: RQ forks a work horse per job and gunicorn
runs several processes, so it would need a shared directory every process writes to and the
cleaning of dead pids' files. Reading at scrape time gives the very numbers the admin health
page shows (both come from portal/fleet_health.py), needs nothing shared but the database and
Redis the service has anyway, and survives restarts: the jobs' counters live in Redis
(portal/metrics.py).
"""
from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from portal import metrics
from portal.extensions import db
from portal.fleet_health import Fleet, gather_fleet

log = logging.getLogger(__name__)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class FleetCollector:
    """Every family, built afresh at each scrape."""

    def collect(self):
        fleet = None
        try:
            fleet = gather_fleet()
        except SQLAlchemyError:
            log.warning("/metrics: the database could not be read", exc_info=True)
            db.session.rollback()
        yield _gauge("eis_database_up", "1 when the database answered this scrape", 1 if fleet else 0)
        if fleet is not None:
            yield from _fleet_families(fleet)
        counters = None
        try:
            counters = metrics.read_counters()
        except (RedisError, OSError):
            log.warning("/metrics: Redis could not be read", exc_info=True)
        redis_up = counters is not None and (fleet is None or fleet.redis_error is None)
        yield _gauge("eis_redis_up", "1 when Redis answered this scrape", 1 if redis_up else 0)
        if fleet is not None and fleet.redis_error is None:
            yield from _redis_families(fleet)
        if counters is not None:
            yield from _counter_families(counters)

    def describe(self):
        return []  # families are known only at scrape time


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _fleet_families(fleet: Fleet):
    family = GaugeMetricFamily("eis_mailboxes", "Mailboxes by state and reason (reason empty when none)",
                               labels=["state", "reason"])
    for (state, reason), n in sorted(fleet.mailboxes.items()):
        family.add_metric([state, reason], n)
    yield family

    lag = GaugeHistogramMetricFamily(
        "eis_sync_lag_seconds", "Pending and active mailboxes by time since their last successful sync "
        "(since linking if never), per provider", labels=["provider"])
    lag_max = GaugeMetricFamily("eis_sync_lag_max_seconds", "The longest time since a pending or active "
                                "mailbox last synced successfully, per provider", labels=["provider"])
    lagging = GaugeMetricFamily("eis_mailboxes_lagging", "Pending and active mailboxes whose last successful "
                                "sync is over twice the longest sync interval ago, per provider",
                                labels=["provider"])
    for provider, numbers in sorted(fleet.lag.items()):
        lag.add_metric([provider], [(_le(bound), n) for bound, n in numbers.buckets], numbers.total_seconds)
        lag_max.add_metric([provider], numbers.max_seconds)
        lagging.add_metric([provider], numbers.lagging)
    yield lag
    yield lag_max
    yield lagging
    yield _gauge("eis_sync_interval_max_seconds", "The longest interval between two syncs of a mailbox "
                 "(the admin's setting)", fleet.interval_max_seconds)
    yield _gauge("eis_mailboxes_due", "Pending and active mailboxes whose next sync time has passed", fleet.due)
    yield _gauge("eis_mailboxes_overdue", "Mailboxes due for over a minute and not yet synced", fleet.overdue)
    yield _gauge("eis_sync_overdue_seconds", "How late the oldest due sync is (0 when none is due)",
                 fleet.late_seconds or 0)
    yield _gauge("eis_sync_runs_running", "Sync runs in flight", fleet.running)
    yield _gauge("eis_sync_runs_stuck", "Running sync runs with no heartbeat for EIS_RUN_STALE_SECONDS", fleet.stuck)
    sends = GaugeMetricFamily("eis_outgoing_emails", "Emails sent from the CRM by state (queued, sent, failed) "
                              "and reason", labels=["state", "reason"])
    for (state, reason), n in sorted(fleet.sends.items()):
        sends.add_metric([state, reason], n)
    yield sends


def _redis_families(fleet: Fleet):
    queues = GaugeMetricFamily("eis_queue_jobs", "RQ jobs by queue and status (queued: waiting; started: "
                               "running; failed: kept in the failed registry)", labels=["queue", "status"])
    for q in fleet.queues:
        queues.add_metric([q.name, "queued"], q.queued)
        queues.add_metric([q.name, "started"], q.started)
        queues.add_metric([q.name, "failed"], q.failed)
    yield queues
    yield _gauge("eis_workers_alive", "RQ workers registered and alive", fleet.workers_alive)


def _counter_families(counters: metrics.Counters):
    durations = HistogramMetricFamily("eis_job_duration_seconds", "How long jobs took, by kind (sync, send)",
                                      labels=["kind"])
    errors = CounterMetricFamily("eis_job_errors", "Jobs that raised (RQ marked them failed), by kind",
                                 labels=["kind"])
    for job in counters.jobs:
        durations.add_metric([job.kind], [(_le(bound), n) for bound, n in job.buckets], job.sum)
        errors.add_metric([job.kind], job.errors)
    yield durations
    yield errors
    failures = CounterMetricFamily("eis_sync_failures", "Failed syncs by reason", labels=["reason"])
    for reason, n in sorted(counters.sync_failures.items()):
        failures.add_metric([reason], n)
    yield failures
    yield CounterMetricFamily("eis_emails_logged", "Emails the sync logged on customers", value=counters.emails_logged)
    polls = CounterMetricFamily("eis_sync_polls", "Successful syncs: quiet (nothing new in the mailbox) or "
                                "new_mail", labels=["result"])
    for result, n in sorted(counters.polls.items()):
        polls.add_metric([result], n)
    yield polls


def render() -> bytes:
    """One scrape. A private registry: nothing of the process (or of other apps in it) leaks in."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector())
    return generate_latest(registry)
