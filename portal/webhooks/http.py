"""Which webhook URLs may be called, and one POST to one.

The same server policy as mail servers (portal/mail/hosts.py, EIS_MAIL_HOSTS_ALLOW): a URL's
host must not resolve to the internal network unless the deployment allows it, and plain
http is accepted only for a host the deployment allows by name or network (an in-house
receiver); everywhere else HTTPS. The check runs when an endpoint is saved (a clear error)
and again at each delivery, and the request goes to the address that was checked. Redirects
are not followed: a receiver could point one at the internal network.
"""
from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import current_app

from portal.mail.hosts import ALLOW_SETTING, HostPolicy, HostRefused, Target

EXCERPT = 500  # characters of a receiver's answer kept in the delivery log
USER_AGENT = "EIS-Webhooks/1"


class UrlRefused(ValueError):
    """A webhook URL the product does not call; the message says why and what to do.
    `transient`: the name was not found, which DNS may answer differently later."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no HTTP answer (time-out, connection refused, TLS, DNS)
    excerpt: str | None
    error: str | None
    duration_ms: int
    refused: bool = False  # the URL itself is refused by the policy: retrying cannot help


def host_policy() -> HostPolicy:
    return HostPolicy.from_setting(current_app.config.get("EIS_MAIL_HOSTS_ALLOW"))


def parts(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path with query) of an acceptable URL, else UrlRefused."""
    if not isinstance(url, str) or not url.strip() or len(url) > 2000:
        raise UrlRefused("Enter the receiver's URL (at most 2,000 characters).")
    if any(ord(c) < 33 or ord(c) == 127 for c in url.strip()):
        raise UrlRefused("The URL must not contain spaces or control characters.")
    split = urlsplit(url.strip())
    if split.scheme not in ("https", "http") or not split.hostname:
        raise UrlRefused("Enter a full URL that starts with https://.")
    if split.username or split.password:
        raise UrlRefused("Put no user name or password in the URL: requests are signed with the secret.")
    try:
        port = split.port or (443 if split.scheme == "https" else 80)
    except ValueError:
        raise UrlRefused("The URL's port is not a number from 1 to 65535.") from None
    path = (split.path or "/") + (f"?{split.query}" if split.query else "")
    return split.scheme, split.hostname, port, path


def _allowed_by_name_or_network(policy: HostPolicy, host: str, target: Target) -> bool:
    if host.strip().rstrip(".").lower() in policy.names:
        return True
    addresses = [ipaddress.ip_address(a) for a in target.addresses]
    return bool(addresses) and all(any(a in n for n in policy.networks) for a in addresses)


def check(url: str) -> tuple[str, Target, str]:
    """Resolve and check a URL: (scheme, the checked target, path). Raises UrlRefused."""
    scheme, host, port, path = parts(url)
    policy = host_policy()
    try:
        target = policy.check(host, port)
    except HostRefused:
        raise UrlRefused(f"{host} is at a private or internal address (loopback, a private network, "
                         f"link-local or cloud metadata): webhooks are not sent there unless an "
                         f"administrator allows the host with {ALLOW_SETTING}.") from None
    except (socket.gaierror, UnicodeError):
        raise UrlRefused(f"The host name {host} was not found.", transient=True) from None
    if scheme == "http" and not _allowed_by_name_or_network(policy, host, target):
        raise UrlRefused("Use https://. Plain http is accepted only for hosts the deployment allows "
                         f"with {ALLOW_SETTING} (an in-house receiver).")
    return scheme, target, path


class _CheckedHTTP(http.client.HTTPConnection):
    def __init__(self, target: Target, timeout: float):
        super().__init__(target.host, target.port, timeout=timeout)
        self._target = target

    def connect(self):
        self.sock = self._target.connect(self.timeout)


class _CheckedHTTPS(http.client.HTTPSConnection):
    def __init__(self, target: Target, timeout: float, context: ssl.SSLContext):
        super().__init__(target.host, target.port, timeout=timeout, context=context)
        self._target = target

    def connect(self):
        self.sock = self._context.wrap_socket(self._target.connect(self.timeout), server_hostname=self.host)


def post(url: str, body: bytes, headers: dict[str, str]) -> Answer:
    """POST the body; an Answer whatever happens (nothing raised for the network or the policy)."""
    started = time.monotonic()
    timeout = float(current_app.config.get("EIS_WEBHOOK_TIMEOUT_SECONDS") or 10)

    def answer(status=None, excerpt=None, error=None, refused=False) -> Answer:
        return Answer(status, excerpt, error, int((time.monotonic() - started) * 1000), refused)

    try:
        scheme, target, path = check(url)
    except UrlRefused as exc:
        return answer(error=str(exc), refused=not exc.transient)
    if scheme == "https":
        context = ssl.create_default_context(cafile=current_app.config.get("EIS_TLS_CA_FILE") or None)
        connection = _CheckedHTTPS(target, timeout, context)
    else:
        connection = _CheckedHTTP(target, timeout)
    try:
        connection.request("POST", path, body=body, headers={
            "Content-Type": "application/json", "User-Agent": USER_AGENT, **headers})
        response = connection.getresponse()
        text = response.read(4 * EXCERPT).decode("utf-8", "replace")[:EXCERPT]
        return answer(status=response.status, excerpt=text or None)
    except TimeoutError:
        return answer(error=f"timed out after {timeout:g} s")
    except (OSError, http.client.HTTPException) as exc:
        return answer(error=f"{type(exc).__name__}: {exc}"[:EXCERPT])
    finally:
        connection.close()
