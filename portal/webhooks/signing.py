"""The EIS-Signature header, the scheme Stripe uses: `t=<unix seconds>,v1=<hex>` where the hex is
HMAC-SHA256(secret, "<t>.<raw body>"). The time is signed too, so a receiver can refuse a
replayed request (README "Webhooks" shows a receiver that checks both)."""
from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "EIS-Signature"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def header_value(secret: str, body: bytes, timestamp: int | None = None) -> str:
    timestamp = int(time.time()) if timestamp is None else timestamp
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify(secret: str, header: str, body: bytes, *, tolerance: int = 300, now: float | None = None) -> bool:
    """True if the header signs this body with this secret, within `tolerance` seconds."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    return hmac.compare_digest(signature(secret, timestamp, body), parts.get("v1", ""))
