"""A real HTTP receiver for webhooks, in a thread of the test process: it checks every request's
EIS-Signature as a CRM would (README "Webhooks"), answers with the statuses a test scripts, and
de-duplicates by event id (each event is processed once however often it arrives)."""
from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Request:
    path: str
    headers: dict
    body: bytes
    signature_ok: bool
    status: int

    @property
    def event(self) -> dict:
        return json.loads(self.body)


@dataclass
class Receiver:
    secret: str = ""
    answers: list[int] = field(default_factory=list)  # statuses to answer, in order; then 200
    delay: float = 0.0  # seconds before answering the next request (then 0 again)
    requests: list[Request] = field(default_factory=list)
    processed: dict[str, dict] = field(default_factory=dict)  # event id -> the event, once
    order: list[str] = field(default_factory=list)  # event ids in the order first processed
    arrived: int = 0  # requests begun (a delayed one counts before it is answered)
    tls: tuple[str, str] | None = None  # (certificate, key): serve HTTPS

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver._handle(self, body)

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.lock = threading.Lock()
        return self

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.server.server_port}/hooks/eis"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def verify(self, header: str, body: bytes, tolerance: int = 300) -> bool:
        parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
        if not parts.get("t", "").isdigit() or abs(time.time() - int(parts["t"])) > tolerance:
            return False
        expected = hmac.new(self.secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, parts.get("v1", ""))

    def _handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        with self.lock:
            self.arrived += 1
            delay, self.delay = self.delay, 0.0
            status = self.answers.pop(0) if self.answers else 200
        if delay:
            time.sleep(delay)
        ok = self.verify(handler.headers.get("EIS-Signature", ""), body)
        if not ok:
            status = 401
        with self.lock:
            self.requests.append(Request(handler.path, dict(handler.headers), body, ok, status))
            if 200 <= status < 300:
                event = json.loads(body)
                if event["id"] not in self.processed:  # de-duplication by id, as a receiver should
                    self.processed[event["id"]] = event
                    self.order.append(event["id"])
        answer = json.dumps({"received": 200 <= status < 300, "status": status}).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(answer)))
        handler.end_headers()
        handler.wfile.write(answer)

    def events(self, event_type: str | None = None) -> list[dict]:
        """The processed events (each once), in the order they were first received."""
        return [self.processed[i] for i in self.order if event_type in (None, self.processed[i]["type"])]

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.processed) < count:
            assert time.monotonic() < deadline, f"{len(self.processed)} of {count} events arrived: {self.requests}"
            time.sleep(0.05)
