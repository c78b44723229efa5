"""Microsoft 365 / Outlook and Google mailboxes over OAuth: providers, consent, tokens.

- Providers come from app.config (EIS_MICROSOFT_*, EIS_GOOGLE_*; defaults in settings.py are
  the providers' public endpoints). Every endpoint is read from the provider's OpenID
  discovery document, so overriding the metadata URL moves the whole flow elsewhere.
- The authorization-code flow with PKCE (S256), state and nonce runs through authlib's
  OAuth2Session; the flow's secrets wait in Redis, bound to the user who started it.
- The mailbox address comes from the ID token, verified with the provider's JWKS (joserfc).
- Tokens are stored as encrypted JSON in Mailbox.secret_encrypted. access_token_for()
  refreshes shortly before expiry (and when asked, after the server refused the token),
  one refresh at a time per mailbox under a Redis lock, and stores a rotated refresh token
  in the same breath: a spent refresh token answers invalid_grant.
- The scopes granted are compared with the required list on every connect and refresh.
- OAuth failures become the reasons of DESIGN.md; an exception raised from here carries
  `classified`, which the sync takes at its word.
"""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from flask import current_app
from sqlalchemy import select

from portal import crypto
from portal.extensions import db
from portal.mail.errors import Classified, classify_exception, classify_text, plain_words
from portal.models import Mailbox
from portal.models.audit import record
from portal.timeutil import utcnow

log = logging.getLogger(__name__)

OAUTH_PROVIDERS = ("microsoft", "google")
OUTLOOK_RESOURCE = "https://outlook.office.com/"
REQUIRED_SCOPES = {
    "microsoft": (OUTLOOK_RESOURCE + "IMAP.AccessAsUser.All", OUTLOOK_RESOURCE + "SMTP.Send",
                  "openid", "email", "profile", "offline_access"),
    "google": ("https://mail.google.com/", "openid", "email", "profile"),
}
# Scopes a provider does not write back in the token response's `scope`: Microsoft names
# only the resource's scopes there. The tokens themselves show these were granted.
_UNECHOED_SCOPES = {"microsoft": frozenset({"openid", "email", "profile", "offline_access"}), "google": frozenset()}
_SCOPE_ALIASES = {  # Google answers with long names for the short OpenID scopes
    "https://www.googleapis.com/auth/userinfo.email": "email",
    "https://www.googleapis.com/auth/userinfo.profile": "profile",
}
_AUTHORIZE_PARAMS = {
    "microsoft": {"prompt": "select_account"},
    # offline + consent: Google gives a refresh token only on a consent it has just shown.
    "google": {"access_type": "offline", "prompt": "consent"},
}
_DEFAULT_METADATA = {
    "microsoft": "https://login.microsoftonline.com/{tenant}/v2.0/.well-known/openid-configuration",
    "google": "https://accounts.google.com/.well-known/openid-configuration",
}
_LABELS = {"microsoft": ("Outlook", "Microsoft 365 / Outlook"), "google": ("Google", "Google")}
_SIGNING_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384")
FLOW_TTL_SECONDS = 900
LOCK_TTL_SECONDS = 60
LOCK_WAIT_SECONDS = 30
_CACHE_SECONDS = 3600
_cache: dict[str, tuple[float, dict]] = {}  # discovery documents and JWKS by URL


# --- providers ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Provider:
    name: str  # microsoft | google
    label: str  # the button: "Connect Outlook"
    title: str  # in sentences: "Microsoft 365 / Outlook"
    client_id: str | None
    client_secret: str | None
    metadata_url: str
    scopes: tuple[str, ...]
    authorize_params: dict
    imap_host: str
    imap_port: int
    imap_security: str
    smtp_host: str
    smtp_port: int
    smtp_security: str

    @property
    def configured(self) -> bool:
        return bool(self.client_id)

    @property
    def env_prefix(self) -> str:
        return f"EIS_{self.name.upper()}_"


def get_provider(name: str) -> Provider | None:
    """The provider's settings from app.config, or None for a name that is not an OAuth provider."""
    if name not in OAUTH_PROVIDERS:
        return None
    config = current_app.config
    prefix = f"EIS_{name.upper()}_"
    metadata_url = config.get(prefix + "METADATA_URL") or _DEFAULT_METADATA[name].format(
        tenant=config.get("EIS_MICROSOFT_TENANT") or "common")
    label, title = _LABELS[name]
    return Provider(
        name=name, label=label, title=title,
        client_id=config.get(prefix + "CLIENT_ID") or None,
        client_secret=config.get(prefix + "CLIENT_SECRET") or None,
        metadata_url=metadata_url, scopes=REQUIRED_SCOPES[name],
        authorize_params=dict(_AUTHORIZE_PARAMS[name]),
        imap_host=config.get(prefix + "IMAP_HOST"), imap_port=int(config.get(prefix + "IMAP_PORT")),
        imap_security=config.get(prefix + "IMAP_SECURITY"),
        smtp_host=config.get(prefix + "SMTP_HOST"), smtp_port=int(config.get(prefix + "SMTP_PORT")),
        smtp_security=config.get(prefix + "SMTP_SECURITY"),
    )


def all_providers() -> list[Provider]:
    return [get_provider(name) for name in OAUTH_PROVIDERS]


def is_oauth(mailbox: Mailbox) -> bool:
    return mailbox.provider in OAUTH_PROVIDERS


# --- failures -----------------------------------------------------------------------------------

class OAuthFailure(Exception):
    """An OAuth step failed. `classified` carries the DESIGN reason and the provider's words;
    `missing_scopes` names what consent lacks, for IT."""

    def __init__(self, classified: Classified, message: str | None = None, missing_scopes: tuple = ()):
        super().__init__(classified.detail)
        self.classified = classified
        self.reason = classified.reason
        self.message = message or plain_words(classified.reason)
        self.missing_scopes = tuple(missing_scopes)


# OAuth error codes (RFC 6749 5.2, OpenID Connect 3.1.2.6) by what they mean for a mailbox.
# Azure's AADSTS codes are read first: Microsoft wraps consent and secret errors in invalid_grant.
_ERROR_REASONS = {
    "invalid_grant": "token_revoked",
    "interaction_required": "token_revoked",
    "login_required": "token_revoked",
    "invalid_client": "app_credentials_invalid",
    "unauthorized_client": "app_credentials_invalid",
    "access_denied": "consent_missing",
    "consent_required": "consent_missing",
    "insufficient_scope": "consent_missing",
    "invalid_scope": "consent_missing",
    "temporarily_unavailable": "server_unreachable",
    "server_error": "server_unreachable",
}


def classify_oauth_error(error: str, description: str | None = None) -> Classified:
    """The reason for an OAuth error response; the provider's words are kept as the detail."""
    words = f"{error}: {description}" if description else error
    by_words = classify_text(words)
    if re.search(r"AADSTS\d+", words) and by_words.reason != "protocol_error":
        return by_words
    reason = _ERROR_REASONS.get(error, by_words.reason)
    return _classified(reason, words, retry_after=by_words.retry_after)


def _classified(reason: str, detail: str, retry_after: float | None = None) -> Classified:
    from portal.mail.errors import REFUSAL_REASONS

    return Classified(reason=reason, refusal=reason in REFUSAL_REASONS, detail=detail[:2000],
                      retry_after=retry_after)


def _failure_of(exc: Exception, what: str) -> OAuthFailure:
    """An OAuthFailure for anything raised while talking to a provider's endpoint."""
    import requests
    from authlib.integrations.base_client.errors import OAuthError

    if isinstance(exc, OAuthFailure):
        return exc
    if isinstance(exc, OAuthError):
        return OAuthFailure(classify_oauth_error(exc.error or "error", exc.description))
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        body = (exc.response.text or "").strip()[:300]
        reason = "server_unreachable" if status >= 500 else "protocol_error"
        if status == 429:
            reason = "throttled"
        retry = exc.response.headers.get("Retry-After")
        detail = f"HTTP {status} from {what}" + (f": {body}" if body else "")
        return OAuthFailure(_classified(reason, detail, float(retry) if retry and retry.isdigit() else None))
    if isinstance(exc, requests.exceptions.SSLError):
        return OAuthFailure(_classified("tls_error", f"{what}: {exc}"))
    if isinstance(exc, requests.RequestException):
        return OAuthFailure(_classified("server_unreachable", f"{what}: {exc}"))
    if isinstance(exc, ValueError):
        return OAuthFailure(_classified("protocol_error", f"{what}: {exc}"))
    return OAuthFailure(_classified("protocol_error", f"{what}: {type(exc).__name__}: {exc}"))


# --- discovery, JWKS, the client ------------------------------------------------------------------

def _timeout() -> float:
    return float(current_app.config.get("EIS_OAUTH_HTTP_TIMEOUT_SECONDS") or 20)


def _get_json(url: str, what: str, *, fresh: bool = False) -> dict:
    import requests

    now = time.monotonic()
    cached = _cache.get(url)
    if cached and not fresh and cached[0] > now:
        return cached[1]
    try:
        response = requests.get(url, timeout=_timeout(), headers={"Accept": "application/json"})
        response.raise_for_status()
        data = response.json()
    except Exception as exc:  # every failure is classified for the person who asked
        raise _failure_of(exc, what) from exc
    if not isinstance(data, dict):
        raise OAuthFailure(_classified("protocol_error", f"{what} at {url} is not a JSON object"))
    _cache[url] = (now + _CACHE_SECONDS, data)
    return data


def metadata(provider: Provider) -> dict:
    """The provider's OpenID discovery document (cached for an hour)."""
    data = _get_json(provider.metadata_url, f"{provider.title}'s discovery document")
    for key in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri"):
        if not data.get(key):
            raise OAuthFailure(_classified(
                "protocol_error", f"{provider.metadata_url} has no {key}: is it an OpenID discovery document?"))
    return data


def _client(provider: Provider, redirect_uri: str | None = None, *, scope: bool = True):
    from authlib.integrations.requests_client import OAuth2Session

    supported = metadata(provider).get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
    method = "client_secret_post" if "client_secret_post" in supported else "client_secret_basic"
    return OAuth2Session(
        provider.client_id, provider.client_secret,
        scope=" ".join(provider.scopes) if scope else None, redirect_uri=redirect_uri,
        code_challenge_method="S256", token_endpoint_auth_method=method, default_timeout=_timeout(),
    )


def verify_id_token(provider: Provider, id_token: str, nonce: str | None) -> dict:
    """The ID token's claims, after checking its signature (the provider's JWKS), issuer,
    audience, expiry and nonce."""
    from joserfc import jwt
    from joserfc.errors import JoseError
    from joserfc.jwk import KeySet
    from joserfc.jwt import JWTClaimsRegistry

    md = metadata(provider)
    allowed = [a for a in (md.get("id_token_signing_alg_values_supported") or ["RS256"]) if a in _SIGNING_ALGORITHMS]
    token = None
    for fresh in (False, True):  # a key we do not know yet: the provider rotated; fetch again
        keys = KeySet.import_key_set(_get_json(md["jwks_uri"], f"{provider.title}'s signing keys", fresh=fresh))
        try:
            token = jwt.decode(id_token, keys, algorithms=allowed or ["RS256"])
            break
        except JoseError as exc:
            if fresh:
                raise OAuthFailure(_classified("protocol_error", f"The ID token could not be verified: {exc}")) from exc
        except ValueError as exc:
            raise OAuthFailure(_classified("protocol_error", f"The ID token is malformed: {exc}")) from exc
    claims = dict(token.claims)
    issuer = md["issuer"]
    if "{tenantid}" in issuer:  # Microsoft's multi-tenant document: the token names its tenant
        issuer = issuer.replace("{tenantid}", str(claims.get("tid", "")))
    issuers = [issuer] + ([issuer.removeprefix("https://")] if provider.name == "google" else [])
    options = {"iss": {"essential": True, "values": issuers},
               "aud": {"essential": True, "value": provider.client_id},
               "exp": {"essential": True}}
    if nonce:
        options["nonce"] = {"essential": True, "value": nonce}
    try:
        JWTClaimsRegistry(leeway=120, **options).validate(claims)
    except JoseError as exc:
        raise OAuthFailure(_classified("protocol_error", f"The ID token was refused: {exc}")) from exc
    return claims


def address_from_claims(provider: Provider, claims: dict) -> str:
    """The mailbox address the ID token vouches for (Microsoft: email, else preferred_username)."""
    from portal.addresses import normalise_address

    if provider.name == "microsoft":
        value = claims.get("email") or claims.get("preferred_username")
    else:
        if claims.get("email_verified") is False:
            raise OAuthFailure(_classified("protocol_error", "Google says the account's address is not verified."),
                               "Google says this account's email address is not verified.")
        value = claims.get("email")
    try:
        return normalise_address(value or "")
    except ValueError:
        raise OAuthFailure(_classified("consent_missing", f"The ID token names no email address ({sorted(claims)})."),
                           f"{provider.title} did not tell us the account's email address: "
                           "allow the CRM to see it (the email scope).", ("email",)) from None


# --- scopes -------------------------------------------------------------------------------------------

def _canonical(scope: str) -> str:
    scope = scope.strip()
    scope = _SCOPE_ALIASES.get(scope, scope)
    for prefix in (OUTLOOK_RESOURCE, "https://outlook.office365.com/"):
        if scope.lower().startswith(prefix):
            return scope[len(prefix):].lower()
    return scope.lower()


def granted_scopes(provider: Provider, token: dict, previous: list | None = None) -> list[str]:
    """The scopes a token response grants, written as the provider wrote them.

    A response without `scope` grants what was asked (RFC 6749 5.1). Scopes the provider does
    not write back (Microsoft: openid, email, profile, offline_access) count as granted when
    the response shows them: an ID token, a refresh token, or an earlier grant of them.
    """
    raw = token.get("scope")
    if raw is None:
        granted = list(previous) if previous else list(provider.scopes)
    else:
        granted = raw.split() if isinstance(raw, str) else [str(s) for s in raw]
    have = {_canonical(s) for s in granted}
    earlier = {_canonical(s) for s in (previous or [])}
    for scope in sorted(_UNECHOED_SCOPES[provider.name]):
        if scope in have:
            continue
        shown = scope in earlier or (token.get("refresh_token") if scope == "offline_access" else token.get("id_token"))
        if shown:
            granted.append(scope)
            have.add(scope)
    return granted


def missing_scopes(provider_name: str, granted: list | None) -> list[str]:
    """The required scopes a granted list lacks (compared by meaning, not spelling)."""
    have = {_canonical(str(s)) for s in (granted or [])}
    return [s for s in REQUIRED_SCOPES.get(provider_name, ()) if _canonical(s) not in have]


def consent_failure(provider: Provider, missing: list[str], granted: list[str]) -> OAuthFailure:
    detail = (f"Scope not granted: {' '.join(missing)} (required: {' '.join(provider.scopes)}; "
              f"granted: {' '.join(granted) or 'none'})")
    message = (f"{provider.title} did not grant the CRM every permission it needs: {', '.join(missing)} "
               "is missing. Connect again and allow all the requested permissions; if your organisation "
               "manages consent, ask IT to grant them to the CRM application.")
    return OAuthFailure(_classified("consent_missing", detail), message, tuple(missing))


# --- the authorization-code flow ------------------------------------------------------------------

@dataclass
class Flow:
    """One authorization in progress: what the callback needs, bound to the user who began it."""
    state: str
    provider: str
    user_id: int
    verifier: str
    nonce: str
    redirect_uri: str
    mailbox_id: int | None = None  # set when reconnecting
    address: str | None = None  # the reconnected mailbox's address

    @staticmethod
    def key(state: str) -> str:
        return f"eis:oauth:flow:{state}"


def begin_authorization(provider: Provider, user, redirect_uri: str,
                        mailbox: Mailbox | None = None) -> tuple[str, Flow]:
    """The provider's authorization URL to send the browser to, and the flow it starts."""
    from authlib.common.security import generate_token

    from portal.queue import get_redis

    md = metadata(provider)
    flow = Flow(state=generate_token(32), provider=provider.name, user_id=user.id,
                verifier=generate_token(64), nonce=generate_token(24), redirect_uri=redirect_uri,
                mailbox_id=mailbox.id if mailbox else None, address=mailbox.address if mailbox else None)
    params = dict(provider.authorize_params)
    if mailbox is not None:
        params["login_hint"] = mailbox.address
    url, _state = _client(provider, redirect_uri).create_authorization_url(
        md["authorization_endpoint"], state=flow.state, code_verifier=flow.verifier, nonce=flow.nonce, **params)
    get_redis().set(Flow.key(flow.state), json.dumps(flow.__dict__), ex=FLOW_TTL_SECONDS)
    return url, flow


class FlowRefused(Exception):
    """The callback's state is unknown, expired, already used or someone else's."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def take_flow(state: str, provider_name: str, user, *, in_session: bool) -> Flow:
    """The flow this state belongs to, once: refused unless the signed-in user began it,
    in this browser session (`in_session`), for this provider."""
    from portal.queue import get_redis

    if not state or len(state) > 200:
        raise FlowRefused("The answer from the sign-in carries no valid state. Start connecting again.")
    redis = get_redis()
    raw = redis.get(Flow.key(state))
    if raw is None:
        raise FlowRefused("This sign-in has expired or was already used. Start connecting again.")
    flow = Flow(**json.loads(raw))
    if flow.user_id != user.id:
        raise FlowRefused("This sign-in was started by another user, so it cannot connect a mailbox to "
                          "your account. Nothing was connected. Start connecting from your own page.", 403)
    if flow.provider != provider_name:
        raise FlowRefused("This answer came back for another email provider than the sign-in was started "
                          "for. Nothing was connected. Start connecting again.")
    if not in_session:
        raise FlowRefused("This sign-in was started in another browser session. Nothing was connected. "
                          "Start connecting again.", 403)
    if not redis.delete(Flow.key(state)):  # used twice at once: only one may go on
        raise FlowRefused("This sign-in was already used. Start connecting again.")
    return flow


@dataclass
class Authorization:
    """What the provider granted at the end of a flow."""
    provider: Provider
    address: str
    token: dict
    claims: dict
    scopes: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        return missing_scopes(self.provider.name, self.scopes)


def complete_authorization(provider: Provider, flow: Flow, code: str) -> Authorization:
    """Exchange the code (with the PKCE verifier) and verify the ID token."""
    md = metadata(provider)
    client = _client(provider, flow.redirect_uri)
    try:
        token = dict(client.fetch_token(md["token_endpoint"], code=code, code_verifier=flow.verifier,
                                        grant_type="authorization_code"))
    except Exception as exc:
        failure = _failure_of(exc, f"{provider.title}'s token endpoint")
        if failure.reason == "app_credentials_invalid":
            mark_app_credentials_invalid(provider, failure.classified)
        raise failure from exc
    if not token.get("access_token"):
        raise OAuthFailure(_classified("protocol_error", "The token response has no access_token."))
    if not token.get("id_token"):
        raise OAuthFailure(_classified("consent_missing", "The token response has no ID token (openid scope)."),
                           missing_scopes=("openid",))
    claims = verify_id_token(provider, token["id_token"], flow.nonce)
    address = address_from_claims(provider, claims)
    return Authorization(provider, address, token, claims, granted_scopes(provider, token))


# --- tokens at rest ---------------------------------------------------------------------------------------

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
        raise OAuthFailure(_classified("token_revoked", "No OAuth tokens are stored for this mailbox."),
                           "This account has no sign-in on file: reconnect it.")
    data = json.loads(crypto.decrypt(secret))
    if not isinstance(data, dict) or not data.get("access_token"):
        raise OAuthFailure(_classified("token_revoked", "The stored OAuth tokens are incomplete."))
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

    from redis.exceptions import LockError

    from portal.queue import get_redis

    lock = get_redis().lock(token_lock_key(mailbox.id), timeout=LOCK_TTL_SECONDS,
                            blocking_timeout=LOCK_WAIT_SECONDS)
    if not lock.acquire():
        if not _due(mailbox.token_expires_at):
            return seen  # still valid; the other refresh will land
        raise OAuthFailure(_classified("server_unreachable", "Another worker is refreshing this mailbox's "
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
        failure = OAuthFailure(_classified("app_credentials_invalid",
                                           f"{provider.env_prefix}CLIENT_ID is not configured."))
        mark_app_credentials_invalid(provider, failure.classified)
        raise failure
    if not tokens.get("refresh_token"):
        raise OAuthFailure(_classified("token_revoked", "No refresh token is stored (offline access not granted)."),
                           missing_scopes=("offline_access",))
    try:
        md = metadata(provider)
        # Microsoft wants the scopes on a refresh; Google refreshes what was granted.
        client = _client(provider, scope=provider.name == "microsoft")
        token = dict(client.refresh_token(md["token_endpoint"], refresh_token=tokens["refresh_token"]))
    except Exception as exc:
        failure = _failure_of(exc, f"{provider.title}'s token endpoint")
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


# --- XOAUTH2 over IMAP and SMTP ----------------------------------------------------------------------------

def xoauth2_string(user: str, access_token: str) -> str:
    return f"user={user}\x01auth=Bearer {access_token}\x01\x01"


def imap_xoauth2_login(session, user: str, access_token: str) -> None:
    """AUTHENTICATE XOAUTH2 on an ImapSession, keeping the server's JSON error in the
    exception's words (imapclient's oauth2_login resends and loses it)."""
    from imapclient.exceptions import LoginError

    said: list[bytes] = []

    def mech(challenge: bytes) -> bytes:
        if not said:
            said.append(b"")
            return xoauth2_string(user, access_token).encode()
        said.append(challenge or b"")
        return b""  # acknowledge the JSON error; the server then answers NO with its words

    try:
        session.client.sasl_login("XOAUTH2", mech)
    except LoginError as exc:
        json_error = b" ".join(c for c in said[1:] if c).decode("utf-8", "replace").strip()
        if json_error:
            raise LoginError(f"{exc} {json_error}") from None
        raise


def login_imap(session, mailbox: Mailbox) -> None:
    """Log an ImapSession in with the mailbox's access token; when the server refuses it,
    refresh once and try again (DESIGN auth_failed for OAuth)."""
    user = mailbox.login or mailbox.address
    try:
        imap_xoauth2_login(session, user, access_token_for(mailbox))
    except OAuthFailure:
        raise
    except Exception as exc:
        if classify_exception(exc).reason != "auth_failed":
            raise
        log.info("mailbox %s: the IMAP server refused the access token; refreshing once", mailbox.id)
        imap_xoauth2_login(session, user, access_token_for(mailbox, force_refresh=True))


def smtp_xoauth2_login(smtp, user: str, access_token: str) -> None:
    """AUTH XOAUTH2 on a connected smtplib.SMTP; a refusal keeps the server's JSON error."""
    import smtplib

    said: list[str] = []

    def answer(challenge: bytes | None = None) -> str:
        if challenge is None:
            return xoauth2_string(user, access_token)
        said.append(challenge.decode("utf-8", "replace") if isinstance(challenge, bytes) else str(challenge))
        return ""

    try:
        smtp.auth("XOAUTH2", answer, initial_response_ok=True)
    except smtplib.SMTPAuthenticationError as exc:
        json_error = " ".join(s for s in said if s).strip()
        if json_error:
            words = exc.smtp_error
            words = words.decode("utf-8", "replace") if isinstance(words, bytes) else str(words)
            raise smtplib.SMTPAuthenticationError(exc.smtp_code, f"{words} {json_error}".encode()) from None
        raise


# --- the app's own credentials ------------------------------------------------------------------------------

def mark_app_credentials_invalid(provider: Provider, classified: Classified) -> list[int]:
    """The provider refused the CRM's client id or secret: every connected mailbox of that
    provider turns Problematic at once, an audit event is kept and operators are alerted."""
    from portal import mailboxes as mailbox_service

    affected = db.session.scalars(select(Mailbox).where(
        Mailbox.provider == provider.name, Mailbox.state.in_(("pending", "active")))).all()
    for mailbox in affected:
        mailbox_service.set_state(mailbox, "problematic", reason="app_credentials_invalid", detail=classified.detail)
    record("oauth_app_credentials_invalid", None, None, provider=provider.name, detail=classified.detail,
           mailboxes=[m.id for m in affected])
    db.session.commit()
    log.critical(
        "OPERATOR ALERT: %s refused the CRM's OAuth app credentials (%s). %d mailbox(es) are now Problematic. "
        "Renew %sCLIENT_SECRET (or fix %sCLIENT_ID) and have the owners reconnect. The provider said: %s",
        provider.title, classified.reason, len(affected), provider.env_prefix, provider.env_prefix, classified.detail)
    return [m.id for m in affected]


# --- linking a mailbox -------------------------------------------------------------------------------------------

def try_imap(provider: Provider, address: str, access_token: str) -> list[str]:
    """Log in over IMAP with the new token once before anything is saved; the capabilities."""
    from portal.mail.imap import ImapSession

    config = current_app.config
    with ImapSession(provider.imap_host, provider.imap_port, provider.imap_security,
                     timeout=min(30, config["EIS_IMAP_TIMEOUT_SECONDS"]),
                     ca_file=config.get("EIS_TLS_CA_FILE")) as session:
        imap_xoauth2_login(session, address, access_token)
        return sorted(session.capabilities())


def link_oauth_mailbox(user, auth: Authorization, flow: Flow) -> tuple[Mailbox, bool]:
    """Connect (or reconnect in place) the mailbox the authorization is for, for `user` only.

    Returns (mailbox, reconnected). Raises LinkError (portal.mailboxes) or, for missing
    consent, OAuthFailure, each with a sentence for the user; nothing is changed then.
    A Problematic mailbox of the same user and address is reconnected in place, keeping
    its checkpoints and history: no gap, no duplicate.
    """
    from portal import mailboxes as mailbox_service
    from portal.mailboxes import LinkError

    provider = auth.provider
    if flow.mailbox_id is not None and auth.address != (flow.address or "").lower():
        raise LinkError("wrong_account",
                        f"You signed in at {provider.title} as {auth.address}, but this connection is "
                        f"{flow.address}. Nothing was changed. Reconnect again and choose {flow.address} "
                        f"at {provider.title}.", status=409)
    if auth.missing:
        raise consent_failure(provider, auth.missing, auth.scopes)
    mine = db.session.scalars(select(Mailbox).where(
        Mailbox.address == auth.address, Mailbox.state != "disconnected")).all()
    if any(m.user_id != user.id for m in mine):
        raise LinkError("mailbox_taken", f"{auth.address} is already connected by another user.", status=409)
    existing = next(iter(mine), None)
    if flow.mailbox_id is not None and (existing is None or existing.id != flow.mailbox_id):
        raise LinkError("not_reconnectable", f"{flow.address} is no longer a connection you can reconnect.",
                        status=409)
    if existing is not None and existing.state != "problematic":
        raise LinkError("already_connected", f"{auth.address} is already connected to your account.", status=409)
    try:
        capabilities = try_imap(provider, auth.address, auth.token["access_token"])
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
    mailbox_service.start_or_reconnect(mailbox, user, reconnect=existing is not None, scopes=list(auth.scopes))
    return mailbox, existing is not None
