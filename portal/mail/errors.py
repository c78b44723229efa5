"""Classify IMAP, SMTP and OAuth failures into the reasons of DESIGN.md.

The reason decides what happens to a mailbox: a refusal (the provider said no: bad
password, revoked token, IMAP switched off, missing consent, our app's credentials)
makes it Problematic at once, since retrying cannot help and may lock the account; a
transient fault is retried with back-off. The provider's own words are always kept
verbatim next to the reason, because support needs them when our reading is wrong.
"""

from __future__ import annotations

import ast
import errno
import imaplib
import re
import smtplib
import socket
import ssl
from dataclasses import dataclass

try:  # imapclient wraps imaplib's errors in its own classes; the module works without it
    from imapclient import exceptions as _imapclient_exceptions
except ImportError:  # pragma: no cover - imapclient is a dependency, kept optional here
    _imapclient_exceptions = None

REFUSAL_REASONS = frozenset(
    {"auth_failed", "token_revoked", "consent_missing", "imap_disabled", "app_credentials_invalid"}
)
TRANSIENT_REASONS = frozenset(
    {"server_unreachable", "tls_error", "throttled", "mailbox_unavailable", "protocol_error"}
)

_DETAIL_LIMIT = 2000

# Azure AD error codes (AADSTSnnnn) that settle the reason whatever the surrounding words:
# Microsoft wraps consent and client-secret errors in "invalid_grant" / "invalid_client".
_AADSTS_REASONS = {
    "65001": "consent_missing",  # the user or admin has not consented to the application
    "65004": "consent_missing",  # the user declined to consent
    "90094": "consent_missing",  # the grant requires admin permission
    "7000222": "app_credentials_invalid",  # the client secret has expired
    "7000215": "app_credentials_invalid",  # an invalid client secret was provided
    "50173": "token_revoked",  # the grant expired: password changed or sessions revoked
    "700082": "token_revoked",  # the refresh token expired after inactivity
    "70008": "token_revoked",  # the refresh token or code has expired
    "70043": "token_revoked",  # expired by a Conditional Access sign-in frequency policy
    "700084": "token_revoked",  # the refresh token's lifetime ended
    "50078": "token_revoked",  # the multi-factor authentication presented has expired
}

# Provider phrases, checked in this order; the first hit wins. The order matters where
# phrases overlap: Dovecot says "[UNAVAILABLE] Temporary authentication failure." when
# its own auth backend is down (transient, not the user's password), and Google says
# "Application-specific password required" in a failed login (IMAP access issue, not a
# wrong password).
_PHRASES: tuple[tuple[str, re.Pattern], ...] = tuple(
    (reason, re.compile("|".join(patterns), re.IGNORECASE))
    for reason, patterns in (
        (
            "mailbox_unavailable",
            (
                r"\[UNAVAILABLE\]",
                r"\[NONEXISTENT\]",
                r"Temporary authentication failure",
            ),
        ),
        (
            "throttled",
            (
                r"\[THROTTLED\]",
                r"Request is throttled",
                r"\[OVERQUOTA\]",
                r"\[LIMIT\]",
                r"Too many (?:simultaneous )?connections",
                r"Too Many Requests",
                r"Maximum number of connections",
                r"Account exceeded command or bandwidth limits",
            ),
        ),
        ("app_credentials_invalid", (r"\binvalid_client\b",)),
        (
            "consent_missing",
            (
                r"\binsufficient_scope\b",
                r"insufficient authentication scopes",
                r"scopes?\b[^.]{0,60}\bnot (?:been )?granted",
                r"\badmin_policy_enforced\b",
            ),
        ),
        ("token_revoked", (r"\binvalid_grant\b", r"Token has been expired or revoked")),
        (
            "imap_disabled",
            (
                r"not enabled for IMAP use",
                r"IMAP access is disabled",
                r"User is authenticated but not connected",
                r"Application-specific password required",
                r"Please log in via your web browser",
                r"web login required",
                r"\[WEBALERT\b",
                r"\b5\.7\.139\b",
                r"SmtpClientAuthentication is disabled",
            ),
        ),
        (
            "auth_failed",
            (
                r"\[AUTHENTICATIONFAILED\]",
                r"AUTHENTICATE failed",
                r"LOGIN failed",
                r"Authentication failed",
                r"Invalid credentials",
                r"Authentication unsuccessful",
                r"Username and Password not accepted",
            ),
        ),
    )
)

# How long the provider asks us to wait. Microsoft: "Request is throttled. Suggested
# Backoff Time: 299499 milliseconds"; HTTP-style: "Retry-After: 30"; or "try again in 5 minutes".
_WAIT = re.compile(
    r"(?:Backoff Time|retry[- ]after|try again in)\s*:?\s*(\d+(?:\.\d+)?)\s*"
    r"(ms|milliseconds?|s|secs?|seconds?|minutes?)?\b",
    re.IGNORECASE,
)

_NETWORK_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNREFUSED",
        "ECONNRESET",
        "ECONNABORTED",
        "ETIMEDOUT",
        "EHOSTUNREACH",
        "EHOSTDOWN",
        "ENETUNREACH",
        "ENETDOWN",
        "ENETRESET",
        "EPIPE",
        "ENOTCONN",
    )
    if hasattr(errno, name)
)


@dataclass(frozen=True)
class Classified:
    reason: str
    refusal: bool  # True: the mailbox turns Problematic at once
    detail: str  # the provider's own words, verbatim, at most 2000 characters
    retry_after: float | None  # seconds the provider asked us to wait, if it said


def classify_text(text: str) -> Classified:
    """Classify a server's or provider's own words (IMAP/SMTP response, OAuth error)."""
    return _classified(_reason_of_text(text), text)


def classify_exception(exc: BaseException) -> Classified:
    """Classify an exception raised while talking to a mail server or OAuth endpoint.

    Network and TLS failures are told by type; protocol errors (imaplib, imapclient,
    smtplib, authlib's OAuthError) by the server's words. An unknown wrapper exception
    is classified by the exception it was raised from, when its own words say nothing.
    An exception that already knows its classification (an attribute `classified`, as
    the OAuth layer raises) is taken at its word.
    """
    own = getattr(exc, "classified", None)
    if isinstance(own, Classified):
        return own
    detail = _words_of(exc)
    return _classified(_reason_of_exception(exc, depth=0), detail)


def is_mail_fault(exc: BaseException) -> bool:
    """A fault of the mail server, the network or the account (as opposed to a bug): IMAP and
    SMTP errors, sockets, TLS, time-outs, an exception that carries its classification, or one
    that says it is (`mail_fault = True`: unreadable stored credentials, no SMTP server set).
    These are classified and recorded, and a job ends cleanly; anything else is raised."""
    known: tuple[type[BaseException], ...] = (imaplib.IMAP4.error, smtplib.SMTPException, OSError, EOFError)
    if _imapclient_exceptions is not None:
        known += (_imapclient_exceptions.IMAPClientError,)
    return isinstance(exc, known) or getattr(exc, "classified", None) is not None \
        or getattr(exc, "mail_fault", False) is True


def plain_words(reason: str) -> str:
    """One sentence saying what went wrong, for reps and support."""
    return _PLAIN_WORDS.get(
        reason, "Something unexpected went wrong while talking to the mail server."
    )


# What the network and TLS layers say (Python's and the OS's words), as a person would say it.
_DETAIL_WORDS = (
    # Our own words (mail/hosts.py, imap.py, smtp.py): nothing was tried, or not a mail server.
    (re.compile(r"is at a private or internal address"),
     "The mail server's address is private or internal: the CRM does not connect to it unless an "
     "administrator allows it (EIS_MAIL_HOSTS_ALLOW)."),
    (re.compile(r"did not answer as an (?:IMAP|SMTP) server"),
     "Something answered at that address and port, but not as a mail server: check the port and the "
     "security setting."),
    (re.compile(r"connection refused|errno 111\b", re.I), "The mail server refused the connection."),
    (re.compile(r"timed? ?out|errno 110\b", re.I), "The mail server did not answer in time."),
    (re.compile(r"name or service not known|nodename nor servname|getaddrinfo failed|"
                r"temporary failure in name resolution|no address associated|errno -[235]\b", re.I),
     "The mail server's name could not be found."),
    (re.compile(r"network is unreachable|no route to host|errno 11[03]\b|errno 101\b", re.I),
     "The mail server cannot be reached from here."),
    (re.compile(r"connection reset|broken pipe|errno 104\b|errno 32\b|unexpected eof|socket error: eof",
                re.I), "The mail server closed the connection unexpectedly."),
    (re.compile(r"certificate verify failed|certificate_verify_failed|self[- ]signed|hostname mismatch",
                re.I), "The mail server's certificate could not be verified."),
    (re.compile(r"wrong version number|unknown protocol|ssl: ", re.I),
     "A secure (TLS) connection could not be set up: the port or the security setting may be wrong."),
)


def detail_words(detail: str | None) -> str | None:
    """A sentence for the words of the network or TLS layer ("[Errno 111] Connection refused" ->
    "The mail server refused the connection."); None when the words are the mail server's own
    (they are shown as they are)."""
    if not detail:
        return None
    for pattern, words in _DETAIL_WORDS:
        if pattern.search(detail):
            return words
    return None


def fix_steps(reason: str, *, support_contact: str | None = None) -> list[str]:
    """What to do about it, each step naming who can do it. `support_contact` is whom
    support reports to (an address or a URL, the EIS_SUPPORT_CONTACT setting); without it,
    the CRM's administrator."""
    contact = (support_contact or "").strip() or "your CRM administrator"
    return [step.replace(_CONTACT, contact) for step in _FIX_STEPS.get(reason, _FIX_STEPS["protocol_error"])]


# --- classification ------------------------------------------------------------------------


def _reason_of_text(text: str) -> str:
    for code in re.findall(r"AADSTS(\d+)", text):
        if code in _AADSTS_REASONS:
            return _AADSTS_REASONS[code]
    for reason, pattern in _PHRASES:
        if pattern.search(text):
            return reason
    return "protocol_error"


def _reason_of_exception(exc: BaseException, depth: int) -> str:
    text = _words_of(exc)
    if isinstance(exc, ssl.SSLError):  # before OSError: SSLError is one
        return "tls_error"
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        # An SMTP 535 is a refused login unless the words say it is something else
        # (Microsoft's "5.7.139 ... SmtpClientAuthentication is disabled").
        reason = _reason_of_text(text)
        return "auth_failed" if reason == "protocol_error" else reason
    if isinstance(
        exc, (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, imaplib.IMAP4.abort)
    ):
        # The connection dropped, or the server hung up with a greeting/BYE: unreachable,
        # unless the server said why ("* BYE [UNAVAILABLE]", "Too many connections").
        reason = _reason_of_text(text)
        return "server_unreachable" if reason == "protocol_error" else reason
    if isinstance(exc, (TimeoutError, ConnectionError, socket.gaierror, EOFError)):
        return "server_unreachable"
    if isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS:
        return "server_unreachable"
    reason = _reason_of_text(text)
    if reason != "protocol_error" or _is_protocol_exception(exc):
        return reason
    cause = exc.__cause__ or exc.__context__
    if cause is not None and depth < 5:
        return _reason_of_exception(cause, depth + 1)
    return reason


def _is_protocol_exception(exc: BaseException) -> bool:
    """Errors that carry a server's answer: their words are the whole story."""
    known: tuple[type[BaseException], ...] = (imaplib.IMAP4.error, smtplib.SMTPException)
    if _imapclient_exceptions is not None:
        known += (_imapclient_exceptions.IMAPClientError,)
    return isinstance(exc, known)


def _words_of(exc: BaseException) -> str:
    """The exception's text as the server sent it.

    imaplib raises with the server's bytes, so str(exc) reads "b'[AUTHENTICATIONFAILED]
    ...'", and imapclient passes that string on; smtplib keeps (code, bytes). The
    Python repr is peeled off so the detail shows the server's words, not ours.
    """
    if isinstance(exc, smtplib.SMTPResponseException):
        message = exc.smtp_error
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        return f"{exc.smtp_code} {message}"
    if len(exc.args) == 1 and isinstance(exc.args[0], bytes):
        return exc.args[0].decode("utf-8", "replace")
    text = str(exc)
    if re.fullmatch(r"b(['\"]).*\1", text, re.DOTALL):
        try:
            return ast.literal_eval(text).decode("utf-8", "replace")
        except (ValueError, SyntaxError):
            pass
    return text or type(exc).__name__


def _retry_after(text: str) -> float | None:
    """Seconds to wait, from "Suggested Backoff Time: 1234 ms" or "Retry-After: 30"."""
    match = _WAIT.search(text)
    if match is None:
        return None
    value, unit = float(match.group(1)), (match.group(2) or "s").lower()
    if unit == "ms" or unit.startswith("milli"):
        return value / 1000
    if unit.startswith("minute"):
        return value * 60
    return value


def _classified(reason: str, detail: str) -> Classified:
    return Classified(
        reason=reason,
        refusal=reason in REFUSAL_REASONS,
        detail=detail[:_DETAIL_LIMIT],
        retry_after=_retry_after(detail),
    )


# --- words for people ------------------------------------------------------------------------

_PLAIN_WORDS = {
    "auth_failed": "The mail server rejected the password or sign-in.",
    "token_revoked": (
        "The permission to read this mailbox was revoked or has expired "
        "(for example after a password change, a long time unused, or an administrator's action)."
    ),
    "consent_missing": "The account has not granted the CRM all the permissions it needs.",
    "imap_disabled": (
        "The mail provider does not allow this account to be used from other email programs "
        "(IMAP or SMTP access is turned off)."
    ),
    "app_credentials_invalid": (
        "The CRM's own registration with the mail provider is not valid (for example an "
        "expired client secret); every mailbox of that provider is affected."
    ),
    "server_unreachable": (
        "The mail server could not be reached "
        "(name lookup failed, connection refused or timed out)."
    ),
    "tls_error": (
        "A secure (TLS) connection to the mail server could not be set up "
        "(certificate or handshake failure)."
    ),
    "throttled": "The mail provider asked us to slow down (too many requests or connections).",
    "mailbox_unavailable": (
        "The mailbox or one of its folders was temporarily unavailable on the mail server."
    ),
    "protocol_error": "The mail server answered in a way we did not understand.",
}

ACCOUNTS_PAGE = "My email accounts"  # the portal's page where reps connect and reconnect
_CONTACT = "{support contact}"
_RECONNECT = (
    f"Mailbox owner: reconnect the account: press Reconnect, beside these steps on {ACCOUNTS_PAGE}, and sign in again "
    "(or type the new password); syncing continues where it stopped, nothing is lost or logged twice. "
    "Or delete the connection and connect the same account again."
)
_REPORT = (
    f"Support: if it keeps failing, report it to {_CONTACT} "
    "with the reason and the server's words shown here."
)
_MICROSOFT_PERMISSIONS = (
    "IT (Microsoft 365): grant the CRM application these permissions: "
    "IMAP.AccessAsUser.All, SMTP.Send, openid, email, profile, offline_access."
)
_ALLOW_CLIENTS = (
    "IT: allow users to use third-party email clients (IMAP and SMTP) for this account. "
    "Google: https://support.google.com/a/answer/105694 - Microsoft: "
    "https://support.microsoft.com/en-us/office/pop-imap-and-smtp-settings-for-outlook-com-"
    "d088b986-291d-42b8-9564-9c414e2aa040"
)
_AUTOMATIC = "Nothing to do at first: the sync retries by itself with growing pauses."

_FIX_STEPS = {
    "auth_failed": (
        "Mailbox owner: check that the password still works by signing in to webmail.",
        _RECONNECT,
        _REPORT,
    ),
    "token_revoked": (_RECONNECT, _REPORT),
    "consent_missing": (
        _MICROSOFT_PERMISSIONS,
        (
            "IT (Google Workspace): allow the CRM application for the domain "
            "(ask us to have it whitelisted while Google's app registration is in progress)."
        ),
        _RECONNECT,
    ),
    "imap_disabled": (
        "Make sure your IT department sees this page.",
        _ALLOW_CLIENTS,
        _RECONNECT,
    ),
    "app_credentials_invalid": (
        (
            "Operators: renew the client secret (or fix the client id) of the CRM's application "
            "registration with the provider and update the service's configuration."
        ),
        "Operators: then run a sync of the affected mailboxes; reconnect any still Problematic.",
    ),
    "server_unreachable": (
        _AUTOMATIC,
        (
            "Mailbox owner: if it lasts, check the server name and port of the connection; "
            "if they are wrong, reconnect with the right ones."
        ),
        "IT: make sure the mail server accepts connections from the CRM (firewall, DNS).",
    ),
    "tls_error": (
        _AUTOMATIC,
        (
            "Mailbox owner: if it lasts, check the security setting (SSL/TLS or STARTTLS) "
            "and the port; reconnect with the right ones."
        ),
        "IT: make sure the mail server presents a valid, unexpired certificate for its name.",
    ),
    "throttled": (
        _AUTOMATIC + " We wait as long as the provider asks and fetch in smaller batches.",
        (
            "Mailbox owner: if it lasts, close other programs or devices that keep many "
            "connections to this mailbox open."
        ),
    ),
    "mailbox_unavailable": (
        _AUTOMATIC + " The folder list is read again on the next sync.",
        "IT: if it lasts, check that the mailbox exists and is not being moved or migrated.",
    ),
    "protocol_error": (_AUTOMATIC, _REPORT),
}
