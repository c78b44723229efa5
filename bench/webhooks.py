#!/usr/bin/env python
"""Webhook back-fill benchmark: what a first back-fill of 3,000 logged emails sends to the CRM's
receiver, and how fast.

    .venv/bin/python bench/webhooks.py                 # EIS_WEBHOOK_RATE_PER_SECOND's default (10/s)
    .venv/bin/python bench/webhooks.py --rate 50 --messages 1000
    .venv/bin/python bench/webhooks.py --without-endpoint    # the back-fill alone, for comparison

Everything runs in a temp folder and is removed at the end: a Dovecot with one mailbox of
--messages customer emails (Maildir files written directly), a redis-server, a SQLite
database made by the migrations, a receiver on loopback (http.server in a thread, checking
every signature), and an endpoint for all event types. The mailbox is linked and back-filled
by the product's own sync (run_sync, in this process); then a real RQ worker (SimpleWorker,
burst) runs the delivery jobs, each turn queueing its continuation, until nothing is due.

Printed: the events written, the back-fill's time with the outbox, the requests the receiver
got, how long delivery took, the mean rate, and the most requests in any one second
(a window of 1 s, its end excluded).
"""
from __future__ import annotations

import argparse
import bisect
import email.utils
import hashlib
import hmac
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class Receiver:
    """Takes every POST, checks its signature, keeps the arrival time and the event id."""

    def __init__(self):
        self.secret = ""
        self.arrivals: list[float] = []
        self.ids: list[str] = []
        self.bad_signatures = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = dict(p.split("=", 1) for p in self.headers.get("EIS-Signature", "").split(","))
                good = hmac.compare_digest(parts.get("v1", ""), hmac.new(
                    receiver.secret.encode(), parts.get("t", "").encode() + b"." + body, hashlib.sha256).hexdigest())
                with receiver.lock:
                    receiver.arrivals.append(time.monotonic())
                    receiver.ids.append(json.loads(body)["id"])
                    receiver.bad_signatures += not good
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/eis"

    def busiest_second(self) -> int:
        times = sorted(self.arrivals)
        return max((bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times)), default=0)


def message(i: int, owner: str, customer: str, when: datetime) -> bytes:
    lines = [f"From: Customer {i % 300} <{customer}>", f"To: {owner}", f"Subject: Offer {i}",
             f"Date: {email.utils.format_datetime(when)}", f"Message-ID: <bench-{i}@client.test>",
             "MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", "", f"Body of offer {i}", ""]
    return "\r\n".join(lines).encode()


def run(args, tmp: Path, started: dict) -> None:
    from cryptography.fernet import Fernet
    from rq import SimpleWorker

    from devservers import Dovecot, RedisServer

    redis_server = RedisServer(root=tmp / "redis")
    started["redis"] = redis_server
    redis_server.start()
    dovecot = Dovecot(root=tmp / "dovecot")
    started["dovecot"] = dovecot
    dovecot.start()
    os.environ["EIS_INSTANCE_PATH"] = str(tmp / "instance")

    from flask_migrate import upgrade

    from portal import create_app, crm
    from portal.accounts import linking
    from portal.extensions import db
    from portal.models import User
    from portal.models.webhooks import EVENT_TYPES, WebhookDelivery, WebhookEvent
    from portal.queue import get_queue, get_redis
    from portal.sync import run_sync
    from portal.webhooks import endpoints

    app = create_app({
        "SECRET_KEY": "bench", "SQLALCHEMY_DATABASE_URI": "sqlite:///" + str(tmp / "eis.sqlite3"),
        "REDIS_URL": redis_server.url, "EIS_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "EIS_MAIL_HOSTS_ALLOW": "127.0.0.1", "EIS_PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000",
        "EIS_WEBHOOK_RATE_PER_SECOND": args.rate,
    })
    receiver = Receiver()
    started["receiver"] = receiver
    owner = "bench-rep@agency.test"
    dovecot.add_user(owner, "bench-pass")
    now = datetime.now(timezone.utc)
    customers = [f"customer{c}@client.test" for c in range(300)]
    dovecot.write_maildir(owner, "INBOX", [
        (message(i, owner, customers[i % 300], now - timedelta(hours=1 + i % 500)), "S",
         (now - timedelta(hours=1 + i % 500)).timestamp()) for i in range(args.messages)])
    with app.app_context():
        upgrade()
        for c, address in enumerate(customers):
            crm.upsert_customer(f"C-{c}", name=f"Customer {c}", primary_email=address,
                                primary_email_since=None, additional_emails=None)
        admin = User(email="admin@crm.test", role="admin")
        rep = User(email="rep@crm.test", role="rep")
        db.session.add_all([admin, rep])
        db.session.commit()
        endpoint = None
        if not args.without_endpoint:
            endpoint, receiver.secret = endpoints.add(receiver.url, EVENT_TYPES, "bench", admin)
            db.session.commit()
        mailbox, _ = linking.link_imap_mailbox(rep, linking.ImapSettings(
            address=owner, login=owner, password="bench-pass", imap_host="127.0.0.1",
            imap_port=dovecot.imap_port, imap_security="none"))
        db.session.commit()
        get_redis().flushdb()  # the jobs the commits queued: the worker below runs them in turn
        t = time.perf_counter()
        sync = run_sync(mailbox.id, trigger="backfill")
        sync_seconds = time.perf_counter() - t
        events = db.session.query(WebhookEvent).count()
        print(f"back-fill: {sync.logged} emails logged ({sync.status}) in {sync_seconds:.1f} s, "
              f"{events} events in the outbox (the link's and the back-fill's)")
        if endpoint is None:
            return

        from portal.queue import enqueue_webhook_delivery

        enqueue_webhook_delivery(endpoint.id)
        t = time.perf_counter()
        SimpleWorker([get_queue("default")], connection=get_redis()).work(burst=True, logging_level="WARNING")
        seconds = time.perf_counter() - t
        left = db.session.query(WebhookDelivery).filter(WebhookDelivery.state != "delivered").count()
    got = len(receiver.arrivals)
    span = (max(receiver.arrivals) - min(receiver.arrivals)) if got > 1 else 0.0
    print(f"delivery at EIS_WEBHOOK_RATE_PER_SECOND={args.rate:g}: {got} requests "
          f"({len(set(receiver.ids))} distinct event ids, one event per request, {receiver.bad_signatures} bad "
          f"signatures, {left} not delivered) in {seconds:.1f} s; mean {got / span if span else 0:.2f}/s, "
          f"at most {receiver.busiest_second()} in any one second")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=10.0, help="EIS_WEBHOOK_RATE_PER_SECOND (default 10)")
    parser.add_argument("--without-endpoint", action="store_true",
                        help="no endpoint: the back-fill's time without the outbox, for comparison")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="eis-bench-webhooks-"))
    started: dict = {}
    try:
        run(args, tmp, started)
    finally:
        if "receiver" in started:
            started["receiver"].server.shutdown()
        for name in ("dovecot", "redis"):
            if name in started:
                started[name].stop() if name == "redis" else started[name].close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
