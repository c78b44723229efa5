"""OAuth tokens at rest and fresh: stored as encrypted JSON in Mailbox.secret_encrypted;
access_token_for() refreshes shortly before expiry (and when asked, after the server refused
the token), one refresh at a time per mailbox under a Redis lock, and stores a rotated
refresh token in the same breath: a spent refresh token answers invalid_grant. The scopes
granted are compared with the required list on every refresh. A refused client secret
turns every mailbox of that provider Problematic and alerts the operators."""
from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone

from flask import current_app
from redis.exceptions import LockError
from sqlalchemy import select

from portal import crypto
from portal.accounts import state
from portal.accounts.oauth.failures import OAuthFailure, classified_as, consent_failure, failure_of
from portal.accounts.oauth.providers import (
    Provider,
    get_provider,
    granted_scopes,
    metadata,
    missing_scopes,
    oauth_client,
)
from portal.extensions import db
from portal.mail.errors import Classified
from portal.models import Mailbox
from portal.models.audit import record
from portal.queue import get_redis
from portal.timeutil import utcnow

log = logging.getLogger(__name__)
LOCK_TTL_SECONDS = 60
LOCK_WAIT_SECONDS = 30


def _expiry(token: dict) -> datetime:
    if token.get("expires_at"):
        return datetime.fromtimestamp(int(token["expires_at"]), timezone.utc).replace(tzinfo=None)
    return utcnow() + timedelta(seconds=int(token.get("expires_in") or 3600))


def store_tokens(mailbox: Mailbox, token: dict, scopes: list[str], previous: dict | None = None) -> None:
    """Put a token response on the mailbox, encrypted; a response without a refresh token
    keeps the one we had (Google does not rotate). The caller commits."""
    expires = _expiry(token)
    data = {
        "access_token": token["access_token"],
        "refresh_token": token.get("refresh_token") or (previous or {}).get("refresh_token"),
        "token_type": token.get("token_type") or "Bearer",
        "expires_at": int(expires.replace(tzinfo=timezone.utc).timestamp()),
        "scope": token.get("scope") if token.get("scope") is not None else (previous or {}).get("scope"),
    }
    mailbox.secret_encrypted = crypto.encrypt(json.dumps(data))
    mailbox.token_expires_at = expires
    mailbox.token_refreshed_at = utcnow()
    mailbox.token_refresh_failures = 0
    mailbox.scopes_granted = list(scopes)


def _load_tokens(secret: str | None) -> dict:
    if not secret:
        raise OAuthFailure(classified_as("token_revoked", "No OAuth tokens are stored for this mailbox."),
                           "This account has no sign-in on file: reconnect it.")
    data = json.loads(crypto.decrypt(secret))
    if not isinstance(data, dict) or not data.get("access_token"):
        raise OAuthFailure(classified_as("token_revoked", "The stored OAuth tokens are incomplete."))
    return data


def _due(expires_at: datetime | None) -> bool:
    margin = int(current_app.config.get("EIS_OAUTH_REFRESH_MARGIN_SECONDS") or 300)
    return expires_at is None or expires_at - timedelta(seconds=margin) <= utcnow()


def token_lock_key(mailbox_id: int) -> str:
    return f"eis:lock:token:{mailbox_id}"


def access_token_for(mailbox: Mailbox, force_refresh: bool = False) -> str:
    """A usable access token for an OAuth mailbox.

    Refreshed when it expires within EIS_OAUTH_REFRESH_MARGIN_SECONDS, or when force_refresh
    (the server just refused it). One refresh at a time per mailbox, across workers: the
    others wait for the lock and then use what it stored. Commits what it stores: a rotated
    refresh token must never be lost. Raises OAuthFailure (with `classified`).
    """
    provider = get_provider(mailbox.provider)
    if provider is None:
        raise ValueError(f"mailbox {mailbox.id} is not an OAuth mailbox ({mailbox.provider})")
    tokens = _load_tokens(mailbox.secret_encrypted)
    if not force_refresh and not _due(mailbox.token_expires_at):
        return tokens["access_token"]
    seen = tokens["access_token"]
    lock = get_redis().lock(token_lock_key(mailbox.id), timeout=LOCK_TTL_SECONDS,
                            blocking_timeout=LOCK_WAIT_SECONDS)
    if not lock.acquire():
        if not _due(mailbox.token_expires_at):
            return seen  # still valid; the other refresh will land
        raise OAuthFailure(classified_as("server_unreachable", "Another worker is refreshing this mailbox's "
                                       f"token and did not finish within {LOCK_WAIT_SECONDS} s."))
    try:
        # What another worker may have stored while we waited (a fresh read, not our cache).
        secret, expires_at, granted = db.session.execute(
            select(Mailbox.secret_encrypted, Mailbox.token_expires_at, Mailbox.scopes_granted)
            .where(Mailbox.id == mailbox.id)).one()
        if secret != mailbox.secret_encrypted:
            mailbox.secret_encrypted, mailbox.token_expires_at, mailbox.scopes_granted = secret, expires_at, granted
        tokens = _load_tokens(secret)
        if tokens["access_token"] != seen and not _due(expires_at):
            return tokens["access_token"]  # refreshed by someone else meanwhile
        if not force_refresh and not _due(expires_at):
            return tokens["access_token"]
        return _refresh(provider, mailbox, tokens, force_refresh)
    finally:
        try:
            lock.release()
        except LockError:  # it expired while we waited on the provider; nothing to release
            pass


def _refresh(provider: Provider, mailbox: Mailbox, tokens: dict, forced: bool) -> str:
    if not provider.configured:
        failure = OAuthFailure(classified_as("app_credentials_invalid",
                                           f"{provider.env_prefix}CLIENT_ID is not configured."))
        mark_app_credentials_invalid(provider, failure.classified)
        raise failure
    if not tokens.get("refresh_token"):
        raise OAuthFailure(classified_as("token_revoked", "No refresh token is stored (offline access not granted)."),
                           missing_scopes=("offline_access",))
    try:
        md = metadata(provider)
        # Microsoft wants the scopes on a refresh; Google refreshes what was granted.
        client = oauth_client(provider, scope=provider.name == "microsoft")
        token = dict(client.refresh_token(md["token_endpoint"], refresh_token=tokens["refresh_token"]))
    except Exception as exc:
        failure = failure_of(exc, f"{provider.title}'s token endpoint")
        mailbox.token_refresh_failures = (mailbox.token_refresh_failures or 0) + 1
        db.session.commit()
        log.warning("mailbox %s: token refresh failed (%s): %s", mailbox.id, failure.reason, failure.classified.detail)
        if failure.reason == "app_credentials_invalid":
            mark_app_credentials_invalid(provider, failure.classified)
        elif not (failure.classified.refusal or forced) and mailbox.token_expires_at \
                and mailbox.token_expires_at > utcnow():
            return tokens["access_token"]  # a passing fault; the old token still works for now
        raise failure from exc
    scopes = granted_scopes(provider, token, previous=mailbox.scopes_granted)
    store_tokens(mailbox, token, scopes, previous=tokens)
    db.session.commit()
    missing = missing_scopes(provider.name, scopes)
    if missing:
        raise consent_failure(provider, missing, scopes)
    return token["access_token"]


def mark_app_credentials_invalid(provider: Provider, classified: Classified) -> list[int]:
    """The provider refused the CRM's client id or secret: every connected mailbox of that
    provider turns Problematic at once, an audit event is kept and operators are alerted."""
    affected = db.session.scalars(select(Mailbox).where(
        Mailbox.provider == provider.name, Mailbox.state.in_(state.SYNCABLE))).all()
    for mailbox in affected:
        state.mark_problematic(mailbox, state.APP_CREDENTIALS_INVALID, classified.detail)
    record("oauth_app_credentials_invalid", None, None, provider=provider.name, detail=classified.detail,
           mailboxes=[m.id for m in affected])
    db.session.commit()
    log.critical(
        "OPERATOR ALERT: %s refused the CRM's OAuth app credentials (%s). %d mailbox(es) are now Problematic. "
        "Renew %sCLIENT_SECRET (or fix %sCLIENT_ID) and have the owners reconnect. The provider said: %s",
        provider.title, classified.reason, len(affected), provider.env_prefix, provider.env_prefix, classified.detail)
    return [m.id for m in affected]
