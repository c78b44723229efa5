"""The notification settings: the system SMTP account (EIS_NOTIFY_SMTP_URL), the From
address, the portal's public address for links. Its password is never logged or shown:
SmtpAccount's repr and every message about it name the host and port only."""
from __future__ import annotations

from dataclasses import dataclass, field
from email.utils import parseaddr
from urllib.parse import unquote, urlsplit

from flask import current_app

# scheme -> (security as mail/smtp.py names it, default port)
SCHEMES = {"smtp": ("none", 25), "smtp+starttls": ("starttls", 587), "smtps": ("ssl", 465)}


class NotifyConfigError(ValueError):
    """EIS_NOTIFY_SMTP_URL cannot be used; the words never hold its password."""


@dataclass(frozen=True)
class SmtpAccount:
    host: str
    port: int
    security: str  # none | starttls | ssl
    login: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def parse_smtp_url(url: str) -> SmtpAccount:
    """`smtp+starttls://user:pass@host:587` (also `smtp://`, plain, and `smtps://`, TLS from the
    first byte); the user and password percent-encoded where they hold `@`, `:` or `/`."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise NotifyConfigError("EIS_NOTIFY_SMTP_URL is not a URL of the form "
                                "smtp+starttls://user:password@host:587") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise NotifyConfigError(f"EIS_NOTIFY_SMTP_URL must start with smtp://, smtp+starttls:// or smtps:// "
                                f"(not {scheme or 'nothing'}://)")
    if not parts.hostname:
        raise NotifyConfigError("EIS_NOTIFY_SMTP_URL names no host")
    security, default_port = SCHEMES[scheme]
    login = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return SmtpAccount(host=parts.hostname, port=port or default_port, security=security,
                       login=login, password=password)


def from_address() -> tuple[str, str] | None:
    """(display name, address) of EIS_NOTIFY_FROM, None when unset or not an address."""
    name, address = parseaddr(current_app.config.get("EIS_NOTIFY_FROM") or "")
    return (name, address) if "@" in address else None


def base_url() -> str | None:
    base = (current_app.config.get("EIS_BASE_URL") or "").strip()
    return base.rstrip("/") if base.startswith(("http://", "https://")) else None


def problems() -> list[str]:
    """What keeps notifications off, in words for the admin's health page (empty: they are on)."""
    config, missing = current_app.config, []
    if not config.get("EIS_NOTIFY_SMTP_URL"):
        missing.append("EIS_NOTIFY_SMTP_URL is not set")
    else:
        try:
            parse_smtp_url(config["EIS_NOTIFY_SMTP_URL"])
        except NotifyConfigError as exc:
            missing.append(str(exc))
    if from_address() is None:
        missing.append("EIS_NOTIFY_FROM is not set to an address")
    if base_url() is None:
        missing.append("EIS_BASE_URL (the portal's public address, for the links) is not set")
    return missing


def enabled() -> bool:
    return not problems()


def account() -> SmtpAccount:
    return parse_smtp_url(current_app.config["EIS_NOTIFY_SMTP_URL"])


def portal_link(endpoint: str, **values) -> str:
    """An absolute link to a page of the portal at EIS_BASE_URL, outside any request (a job)."""
    base = urlsplit(base_url() or "")
    adapter = current_app.url_map.bind(base.netloc, script_name=base.path or "/", url_scheme=base.scheme)
    return adapter.build(endpoint, values, force_external=True)


def summary() -> str:
    """One sentence for the admin's health page (after the setting's name)."""
    missing = problems()
    if missing:
        return ("and its companions are not all set, so notifications are off: no email tells a mailbox's owner "
                "that it turned Problematic, and IT gets no daily digest (" + "; ".join(missing) + ").")
    return (f"sends notifications through {account().where} as {from_address()[1]}, with links to {base_url()}: "
            "the owner of a mailbox that turns Problematic, and IT's daily digest.")
