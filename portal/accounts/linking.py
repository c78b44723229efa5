"""Linking a mailbox to its owner (by password or OAuth), reconnecting it in place, and
deleting the connection. Credentials are tried before anything is saved; only the user who
owns a mailbox links it (DESIGN rule 1)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select

from portal import crypto, runtime_settings
from portal.accounts import policy, state
from portal.accounts.oauth.failures import consent_failure
from portal.accounts.oauth.flow import Authorization, Flow
from portal.accounts.oauth.providers import Provider
from portal.accounts.oauth.tokens import store_tokens
from portal.accounts.sessions import imap_session
from portal.extensions import db
from portal.mail.errors import Classified, classify_exception, plain_words
from portal.mail.hosts import HostRefused
from portal.mail.imap import NotImapServer
from portal.models import Mailbox, User
from portal.models.audit import record
from portal.timeutil import utcnow


@dataclass
class ImapSettings:
    address: str
    login: str
    password: str
    imap_host: str
    imap_port: int
    imap_security: str
    smtp_host: str | None = None
    smtp_port: int | None = None
    smtp_security: str | None = None


class LinkError(Exception):
    """Linking refused; `code` is for the API, the message for a person (with the server's
    words in it); `words` the sentence alone, for pages that show the server's words apart."""

    def __init__(self, code: str, message: str, status: int = 422, classified: Classified | None = None,
                 words: str | None = None):
        super().__init__(message)
        self.code, self.status, self.classified = code, status, classified
        self.words = words or message


def try_login(settings: ImapSettings) -> list[str]:
    """Log in once with the given credentials; return the server's capabilities."""
    try:
        with imap_session(settings.imap_host, settings.imap_port, settings.imap_security, linking=True) as session:
            session.login_password(settings.login, settings.password)
            return sorted(session.capabilities())
    except (HostRefused, NotImapServer) as exc:
        raise _not_tried(exc) from None
    except Exception as exc:  # every failure is classified and told to the user
        classified = classify_exception(exc)
        code = {"auth_failed": "authentication_failed", "tls_error": "tls_failed",
                "server_unreachable": "connection_failed"}.get(classified.reason, classified.reason)
        raise LinkError(code, f"{_link_words(classified)} The server said: {classified.detail}", status=422,
                        classified=classified, words=_link_words(classified)) from None


def _not_tried(exc: HostRefused | NotImapServer) -> LinkError:
    """Our own words, not a mail server's: an internal address, or not an IMAP server at all
    (what such a server sent is never shown: it may be another service's banner)."""
    if isinstance(exc, HostRefused):
        return LinkError("host_not_allowed", str(exc), status=422)
    return LinkError("not_an_imap_server", f"{exc} Check the host name, the port and the security setting.",
                     status=422)


def _link_words(c: Classified) -> str:
    return {
        "authentication_failed": "The mail server refused the login and password.",
        "auth_failed": "The mail server refused the login and password.",
        "tls_error": "A secure (TLS) connection to the mail server failed; check the port and security setting.",
        "server_unreachable": "The mail server could not be reached; check the host name and port.",
        "imap_disabled": "The server refuses IMAP for this account; IT must allow third-party email clients.",
    }.get(c.reason, "The mail server refused the connection.")


def _check_domain(address: str) -> None:
    """Only addresses at the organisation's domains (EIS_MAILBOX_DOMAINS), checked before
    anything is tried or saved."""
    refusal = policy.refusal(address)
    if refusal:
        raise LinkError("domain_not_allowed", refusal, status=422)


def _connected_with(address: str, user: User) -> Mailbox | None:
    """The user's own connected mailbox with this address, if any; refused if another
    user's (an address is one person's mailbox)."""
    mine = db.session.scalars(select(Mailbox).where(
        Mailbox.address == address, Mailbox.state != state.DISCONNECTED)).all()
    if any(m.user_id != user.id for m in mine):
        raise LinkError("mailbox_taken", f"{address} is already connected by another user.", status=409)
    return next(iter(mine), None)


def link_imap_mailbox(user: User, settings: ImapSettings) -> tuple[Mailbox, bool]:
    """Link (or reconnect) a password mailbox for `user`. Credentials are tried first.

    Returns (mailbox, reconnected). A Problematic mailbox of the same user and address is
    reconnected in place, keeping its checkpoints and history: no gap, no duplicate.
    """
    _check_domain(settings.address)
    existing = _connected_with(settings.address, user)
    if existing is not None and existing.state != state.PROBLEMATIC:
        raise LinkError("already_connected", f"{settings.address} is already connected to your account.", status=409)
    capabilities = try_login(settings)
    mailbox = existing or Mailbox(user_id=user.id, address=settings.address, provider="imap",
                                  connected_by_id=user.id)
    for field in ("login", "imap_host", "imap_port", "imap_security", "smtp_host", "smtp_port", "smtp_security"):
        setattr(mailbox, field, getattr(settings, field))
    mailbox.secret_encrypted = crypto.encrypt(settings.password)
    mailbox.capabilities = capabilities
    start_or_reconnect(mailbox, user, reconnect=existing is not None)
    return mailbox, existing is not None


def try_imap(provider: Provider, address: str, access_token: str) -> list[str]:
    """Log in over IMAP with the new token once before anything is saved; the capabilities."""
    with imap_session(provider.imap_host, provider.imap_port, provider.imap_security, linking=True) as session:
        session.login_xoauth2(address, access_token)
        return sorted(session.capabilities())


def link_oauth_mailbox(user: User, auth: Authorization, flow: Flow) -> tuple[Mailbox, bool]:
    """Connect (or reconnect in place) the mailbox the authorization is for, for `user` only.

    Returns (mailbox, reconnected). Raises LinkError or, for missing consent, OAuthFailure,
    each with a sentence for the user; nothing is changed then. A Problematic mailbox of the
    same user and address is reconnected in place, keeping its checkpoints and history.
    """
    provider = auth.provider
    if flow.mailbox_id is not None and auth.address != (flow.address or "").lower():
        raise LinkError("wrong_account",
                        f"You signed in at {provider.title} as {auth.address}, but this connection is "
                        f"{flow.address}. Nothing was changed. Reconnect again and choose {flow.address} "
                        f"at {provider.title}.", status=409)
    _check_domain(auth.address)  # the address of the verified ID token
    if auth.missing:
        raise consent_failure(provider, auth.missing, auth.scopes)
    existing = _connected_with(auth.address, user)
    if flow.mailbox_id is not None and (existing is None or existing.id != flow.mailbox_id):
        raise LinkError("not_reconnectable", f"{flow.address} is no longer a connection you can reconnect.",
                        status=409)
    if existing is not None and existing.state != state.PROBLEMATIC:
        raise LinkError("already_connected", f"{auth.address} is already connected to your account.", status=409)
    try:
        capabilities = try_imap(provider, auth.address, auth.token["access_token"])
    except (HostRefused, NotImapServer) as exc:
        refused = _not_tried(exc)
        raise LinkError(refused.code, f"{provider.title} accepted the sign-in, but its IMAP server was not "
                        f"tried: {refused}", status=refused.status) from None
    except Exception as exc:  # every failure is classified and told to the user
        classified = classify_exception(exc)
        raise LinkError(classified.reason, f"{provider.title} accepted the sign-in, but its mail server refused "
                        f"IMAP: {plain_words(classified.reason)} The server said: {classified.detail}",
                        status=422, classified=classified) from None
    mailbox = existing or Mailbox(user_id=user.id, address=auth.address, connected_by_id=user.id)
    mailbox.provider = provider.name
    mailbox.login = auth.address
    for part in ("imap", "smtp"):
        for item in ("host", "port", "security"):
            setattr(mailbox, f"{part}_{item}", getattr(provider, f"{part}_{item}"))
    store_tokens(mailbox, auth.token, auth.scopes)
    mailbox.capabilities = capabilities
    start_or_reconnect(mailbox, user, reconnect=existing is not None, scopes=list(auth.scopes))
    return mailbox, existing is not None


def start_or_reconnect(mailbox: Mailbox, user: User, *, reconnect: bool, **audit) -> None:
    """The common end of linking, by password or OAuth: a new mailbox gets its back-fill
    window and first state; a reconnected one goes back to syncing where it stopped."""
    if not reconnect:
        now = utcnow()
        mailbox.connected_at = now
        mailbox.backfill_since = now - timedelta(days=runtime_settings.get("backfill_days"))
        db.session.add(mailbox)
        db.session.flush()
        state.begin(mailbox, user)
    else:
        state.resume(mailbox, user)
    record("mailbox_reconnected" if reconnect else "mailbox_connected", user, mailbox,
           address=mailbox.address, provider=mailbox.provider, **audit)


def disconnect(mailbox: Mailbox, actor: User) -> None:
    """Credentials wiped, address kept as internal, logged email kept (seed: delete)."""
    mailbox.secret_encrypted = None
    mailbox.token_expires_at = None
    state.disconnect(mailbox, actor)
    record("mailbox_deleted", actor, mailbox, address=mailbox.address)
