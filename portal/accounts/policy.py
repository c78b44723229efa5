"""Which addresses may be connected as mailboxes: the domains the organisation owns
(EIS_MAILBOX_DOMAINS). An address connected by someone who does not own it would count as
internal for everybody (DESIGN rule 6) and hide a customer's email, so the domain is checked
before anything is tried or saved, for password and OAuth mailboxes alike."""
from __future__ import annotations

from flask import current_app


def allowed_domains() -> tuple[str, ...] | None:
    """The configured domains, lower-cased; None when any domain may be connected."""
    raw = current_app.config.get("EIS_MAILBOX_DOMAINS")
    if not raw:
        return None
    items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
    domains = tuple(d.strip().lower().lstrip("@") for d in items if d and d.strip())
    return domains or None


def refusal(address: str) -> str | None:
    """Why `address` may not be connected, in a sentence; None when it may. A domain matches
    exactly (sales.example.com is not example.com: list it too)."""
    domains = allowed_domains()
    if domains is None:
        return None
    domain = address.rpartition("@")[2].lower()
    if domain in domains:
        return None
    named = ", ".join(domains)
    return (f"{address} cannot be connected: only addresses at {named} may be connected here. "
            "Connect your work mailbox, or ask your administrator.")
