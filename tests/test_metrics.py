"""What the operators' monitoring reads: /metrics (Prometheus text, bearer EIS_METRICS_TOKEN),
/healthz and /readyz, the counters the jobs write, the admin health page showing the same
numbers, and the alert rules in docs/alerts.yml naming metrics that really exist.

A machine scrapes /metrics, so the test client stands in for Prometheus here; what a person
sees on the health page is the same numbers, read from the same module."""
import re
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from rq import Worker

from portal import create_app, metrics
from portal.extensions import db
from portal.models import OutgoingEmail
from portal.queue import enqueue_sync, get_queue, get_redis
from portal.timeutil import utcnow
from tests.conftest import _config
from tests.test_pages_ops import make_mailbox, signed_in

ROLES = ("rep", "support", "it", "admin")
TOKEN = "scrape-token-" + "x" * 40
ALERTS = Path(__file__).resolve().parents[1] / "docs" / "alerts.yml"

# No sign-in for the machines' routes; /metrics is closed without its token (unset in tests).
ROUTE_ROLE_TABLE = [
    ("GET", "/healthz", None, {**{role: 200 for role in ROLES}, "anonymous": 200}),
    ("GET", "/readyz", None, {**{role: 200 for role in ROLES}, "anonymous": 200}),
    ("GET", "/metrics", None, {**{role: 404 for role in ROLES}, "anonymous": 404}),
]


def scrape(client, token=TOKEN) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one authorised scrape."""
    r = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.status_code
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(r.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def closed_port() -> int:
    import socket  # a port nothing listens on: bound, never listened to, then freed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_away(app) -> None:
    """The app's Redis is at a port nothing listens on, configured as a deployment does it."""
    app.config["REDIS_URL"] = f"redis://127.0.0.1:{closed_port()}/0"
    app.extensions["eis_redis"] = None


def outgoing(owner, mailbox, customer, n, state, reason=None):
    db.session.add(OutgoingEmail(idempotency_key=f"k-{n}", user_id=owner.id, mailbox_id=mailbox.id,
                                 customer_id=customer.id, message_id=f"<m{n}@crm.test>", subject="Offer",
                                 body="Hello", state=state, reason=reason))
    db.session.commit()


def test_metrics_give_the_fleet_built_in_the_database_and_the_health_page_the_same(world, app):
    app.config["EIS_METRICS_TOKEN"] = TOKEN
    now = utcnow()
    petra = world.user("petra@crm.test")
    # imap: one synced 5 min ago, one last synced 3 h ago and due for 2 h, one just linked (due, in grace).
    synced = make_mailbox(petra, "synced@agency.test", "active", last_success_at=now - timedelta(minutes=5),
                          next_sync_at=now + timedelta(minutes=10))
    late = make_mailbox(petra, "late@agency.test", "active", last_success_at=now - timedelta(hours=3),
                        next_sync_at=now - timedelta(hours=2))
    make_mailbox(petra, "new@agency.test", "pending", connected_at=now - timedelta(seconds=30),
                 next_sync_at=now - timedelta(seconds=20))
    # microsoft: retrying after a transient fault (still active); google: refused twice, one gone.
    make_mailbox(petra, "retry@agency.test", "active", "server_unreachable", provider="microsoft",
                 last_success_at=now - timedelta(minutes=50), next_sync_at=now + timedelta(minutes=4))
    for i in range(2):
        make_mailbox(petra, f"bad{i}@agency.test", "problematic", "auth_failed", provider="google",
                     last_success_at=now - timedelta(days=3))
    make_mailbox(petra, "gone@agency.test", "disconnected", provider="google")
    customer = world.customer("C-1", "dvorak@client.test")
    for n, (state, reason) in enumerate([("sent", None), ("sent", None), ("failed", "recipient_rejected"),
                                         ("queued", None)]):
        outgoing(petra, synced, customer, n, state, reason)
    enqueue_sync(late.id, "scheduled")
    worker = Worker([get_queue(q) for q in ("send", "sync", "default")], connection=get_redis(), name="w-1")
    worker.register_birth()
    try:
        s = scrape(app.test_client())
        _, admin = signed_in(world, "admin")
        page = admin.get("/admin/health").get_data(as_text=True)
    finally:
        worker.register_death()

    # Mailboxes by state and reason; every state is there, even at 0.
    assert value(s, "eis_mailboxes", state="active", reason="") == 2
    assert value(s, "eis_mailboxes", state="active", reason="server_unreachable") == 1
    assert value(s, "eis_mailboxes", state="pending", reason="") == 1
    assert value(s, "eis_mailboxes", state="problematic", reason="auth_failed") == 2
    assert value(s, "eis_mailboxes", state="problematic", reason="") == 0
    assert value(s, "eis_mailboxes", state="disconnected", reason="") == 1
    # Sync lag per provider, over pending and active mailboxes only.
    assert value(s, "eis_sync_lag_seconds_bucket", provider="imap", le="600.0") == 2
    assert value(s, "eis_sync_lag_seconds_bucket", provider="imap", le="7200.0") == 2
    assert value(s, "eis_sync_lag_seconds_bucket", provider="imap", le="21600.0") == 3
    assert value(s, "eis_sync_lag_seconds_bucket", provider="imap", le="+Inf") == 3
    assert value(s, "eis_sync_lag_seconds_gcount", provider="imap") == 3
    assert value(s, "eis_sync_lag_seconds_gsum", provider="imap") == pytest.approx(3 * 3600 + 300 + 30, abs=10)
    assert value(s, "eis_sync_lag_max_seconds", provider="imap") == pytest.approx(3 * 3600, abs=5)
    assert value(s, "eis_sync_lag_max_seconds", provider="microsoft") == pytest.approx(50 * 60, abs=5)
    assert value(s, "eis_sync_lag_seconds_gcount", provider="google") == 0  # Problematic ones are not synced
    assert value(s, "eis_sync_interval_max_seconds") == 30 * 60
    assert value(s, "eis_mailboxes_lagging", provider="imap") == 1  # over twice 30 min
    assert value(s, "eis_mailboxes_lagging", provider="microsoft") == 0
    # Due: the late one and the new one; past the minute's grace only the late one.
    assert value(s, "eis_mailboxes_due") == 2
    assert value(s, "eis_mailboxes_overdue") == 1
    assert value(s, "eis_sync_overdue_seconds") == pytest.approx(2 * 3600, abs=5)
    # Sends by outcome, queues and workers.
    assert value(s, "eis_outgoing_emails", state="sent", reason="") == 2
    assert value(s, "eis_outgoing_emails", state="failed", reason="recipient_rejected") == 1
    assert value(s, "eis_outgoing_emails", state="queued", reason="") == 1
    assert value(s, "eis_queue_jobs", queue="sync", status="queued") == 1
    assert value(s, "eis_queue_jobs", queue="send", status="queued") == 0
    assert value(s, "eis_workers_alive") == 1
    assert value(s, "eis_database_up") == 1 and value(s, "eis_redis_up") == 1

    # The admin health page shows the same numbers.
    for state, n in (("active", 3), ("pending", 1), ("problematic", 2), ("disconnected", 1)):
        assert re.search(rf'data-state="{state}">.*?<td class="num">{n}</td>', page), state
    assert 'data-reason="problematic-auth_failed"' in page and 'data-reason="active-server_unreachable"' in page
    assert re.search(r'data-reason="problematic-auth_failed">.*?<td class="num">2</td>', page)
    assert re.search(r'data-metric="due"><span class="metric-n">2</span>', page)
    assert re.search(r'data-metric="overdue"><span class="metric-n">1</span>', page)
    assert re.search(r'data-metric="workers"><span class="metric-n">1</span>', page)
    assert re.search(r'data-queue="sync"><td>sync</td><td class="num">1</td>', page)
    imap_row = re.search(r'data-provider="imap" data-count="(\d+)" data-max-seconds="(\d+)"', page)
    assert int(imap_row[1]) == 3
    assert int(imap_row[2]) == pytest.approx(value(s, "eis_sync_lag_max_seconds", provider="imap"), abs=3)
    assert re.search(r'data-provider="imap".*?data-lagging="1"', page)
    assert re.search(r'data-send-state="sent"><td>sent</td><td class="num">2</td>', page)
    assert re.search(r'data-send-state="failed"><td>failed</td><td class="num">1</td>', page)


def test_metrics_are_closed_without_the_right_token(app, client):
    # Unset: closed for everybody, whatever they send.
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404
    app.config["EIS_METRICS_TOKEN"] = TOKEN
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN[:-1]}"},
                    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}, {"X-Token": TOKEN}):
        r = client.get("/metrics", headers=headers)
        assert r.status_code == 404 and "eis_" not in r.get_data(as_text=True), headers
    r = app.test_client().get("/metrics", headers={"Authorization": f"bearer {TOKEN}"})  # no cookies, as Prometheus
    assert r.status_code == 200 and "eis_mailboxes" in r.get_data(as_text=True)
    assert r.headers["Cache-Control"] == "no-store" and r.headers["X-Content-Type-Options"] == "nosniff"
    assert "Set-Cookie" not in r.headers


def test_healthz_and_readyz_answer_without_signing_in(client):
    for path, body in (("/healthz", "ok\n"), ("/readyz", "ready\n")):
        r = client.get(path)
        assert (r.status_code, r.get_data(as_text=True)) == (200, body), path
        assert r.headers["Cache-Control"] == "no-store" and "Content-Security-Policy" in r.headers
        assert "Set-Cookie" not in r.headers


def test_readyz_is_503_naming_redis_when_redis_is_unreachable(app, client):
    app.config["EIS_METRICS_TOKEN"] = TOKEN
    redis_away(app)
    r = client.get("/readyz")
    assert r.status_code == 503 and r.get_data(as_text=True) == "redis: unreachable\n"
    assert client.get("/healthz").status_code == 200  # the process itself is fine
    s = scrape(client)  # the database's numbers still come, and Redis is said to be down
    assert value(s, "eis_redis_up") == 0 and value(s, "eis_database_up") == 1
    assert value(s, "eis_mailboxes", state="active", reason="") == 0
    assert not any(name == "eis_workers_alive" for name, _ in s)


def test_readyz_is_503_naming_the_database_when_it_is_unreachable(redis_server, tmp_path):
    config = _config(f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/eis", redis_server.url, tmp_path)
    app = create_app({**config, "EIS_METRICS_TOKEN": TOKEN})
    client = app.test_client()
    r = client.get("/readyz")
    assert r.status_code == 503 and r.get_data(as_text=True) == "database: unreachable\n"
    s = scrape(client)
    assert value(s, "eis_database_up") == 0 and value(s, "eis_redis_up") == 1
    assert not any(name == "eis_mailboxes" for name, _ in s)


def test_a_real_sync_job_counts_its_duration_and_the_emails_it_logged(mail, world, app, dovecot):
    app.config["EIS_METRICS_TOKEN"] = TOKEN
    world.customer("C-DVORAK", "dvorak@client.test")
    _rep, box = mail.rep_with_mailbox("petra")
    for subject in ("Offer for flat 12", "Viewing on Saturday"):
        mail.put(box.address, from_="dvorak@client.test", to=box.address, subject=subject)
    run = mail.sync(box, "backfill")
    assert (run.status, run.logged) == ("succeeded", 2)
    s = scrape(app.test_client())
    assert value(s, "eis_job_duration_seconds_count", kind="sync") == 1
    assert value(s, "eis_job_duration_seconds_bucket", kind="sync", le="+Inf") == 1
    assert 0 < value(s, "eis_job_duration_seconds_sum", kind="sync") < 60
    assert value(s, "eis_emails_logged_total") == 2
    assert value(s, "eis_sync_polls_total", result="new_mail") == 1
    assert value(s, "eis_sync_polls_total", result="quiet") == 0

    assert mail.sync(box).logged == 0  # nothing new: a quiet poll
    dovecot.set_password(box.address, "changed-by-it")
    assert mail.sync(box).error_class == "auth_failed"
    s = scrape(app.test_client())
    assert value(s, "eis_job_duration_seconds_count", kind="sync") == 3
    assert value(s, "eis_sync_polls_total", result="quiet") == 1
    assert value(s, "eis_sync_failures_total", reason="auth_failed") == 1
    assert value(s, "eis_emails_logged_total") == 2
    assert value(s, "eis_job_errors_total", kind="sync") == 0  # a refusal is recorded, not raised
    assert value(s, "eis_mailboxes", state="problematic", reason="auth_failed") == 1


def test_a_job_is_never_failed_by_its_metrics_when_redis_is_away(app):
    redis_away(app)
    with metrics.observe_job("sync"):
        metrics.count_emails_logged(3)
        metrics.count_poll(quiet=True)
    with pytest.raises(ZeroDivisionError):  # the job's own error comes through unchanged
        with metrics.observe_job("send"):
            1 / 0
    metrics.count_sync_failure("throttled")  # outside a job: written at once, and still no error


def test_a_job_that_raises_is_counted_as_an_error_of_its_kind(app, client):
    app.config["EIS_METRICS_TOKEN"] = TOKEN
    with pytest.raises(RuntimeError):
        with metrics.observe_job("send"):
            metrics.count_emails_logged(1)
            raise RuntimeError("the database went away")
    with metrics.observe_job("send"):
        pass
    s = scrape(client)
    assert value(s, "eis_job_duration_seconds_count", kind="send") == 2
    assert value(s, "eis_job_errors_total", kind="send") == 1
    assert value(s, "eis_emails_logged_total") == 1  # counted before it raised: still written


def test_alert_rules_name_only_metrics_that_metrics_exports(app, client):
    app.config["EIS_METRICS_TOKEN"] = TOKEN
    with metrics.observe_job("sync"):  # so that the counters have samples
        metrics.count_sync_failure("throttled")
        metrics.count_emails_logged(1)
        metrics.count_poll(quiet=True)
    exported = {name for name, _labels in scrape(client)}
    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    names = {rule["alert"] for rule in rules}
    assert {"EisProblematicRising", "EisSyncLagOverTwiceMaxInterval", "EisQueueBacklog",
            "EisNoWorkerAlive"} <= names
    for rule in rules:
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        used = set(re.findall(r"\beis_[a-z_]+", rule["expr"]))
        assert used, rule["alert"]
        assert used <= exported, (rule["alert"], used - exported)
