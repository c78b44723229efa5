"""The OAuth providers (Microsoft 365 / Outlook and Google): their settings from app.config,
their OpenID discovery documents and keys, ID tokens, and the scopes the CRM needs.

Providers come from app.config (EIS_MICROSOFT_*, EIS_GOOGLE_*; defaults in settings.py are
the providers' public endpoints). Every endpoint is read from the provider's discovery
document, so overriding the metadata URL moves the whole flow elsewhere (the tests do).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import requests
from authlib.integrations.requests_client import OAuth2Session
from flask import current_app
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from portal.accounts.oauth.failures import OAuthFailure, classified_as, failure_of
from portal.addresses import normalise_address
from portal.models import Mailbox

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
_CACHE_SECONDS = 3600
_cache: dict[str, tuple[float, dict]] = {}  # discovery documents and JWKS by URL


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


# -- discovery, JWKS, the client -------------------------------------------------------------
def http_timeout() -> float:
    return float(current_app.config.get("EIS_OAUTH_HTTP_TIMEOUT_SECONDS") or 20)


def _get_json(url: str, what: str, *, fresh: bool = False) -> dict:
    now = time.monotonic()
    cached = _cache.get(url)
    if cached and not fresh and cached[0] > now:
        return cached[1]
    try:
        response = requests.get(url, timeout=http_timeout(), headers={"Accept": "application/json"})
        response.raise_for_status()
        data = response.json()
    except Exception as exc:  # every failure is classified for the person who asked
        raise failure_of(exc, what) from exc
    if not isinstance(data, dict):
        raise OAuthFailure(classified_as("protocol_error", f"{what} at {url} is not a JSON object"))
    _cache[url] = (now + _CACHE_SECONDS, data)
    return data


def metadata(provider: Provider) -> dict:
    """The provider's OpenID discovery document (cached for an hour)."""
    data = _get_json(provider.metadata_url, f"{provider.title}'s discovery document")
    for key in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri"):
        if not data.get(key):
            raise OAuthFailure(classified_as(
                "protocol_error", f"{provider.metadata_url} has no {key}: is it an OpenID discovery document?"))
    return data


def oauth_client(provider: Provider, redirect_uri: str | None = None, *, scope: bool = True) -> OAuth2Session:
    """authlib's client for the provider's token endpoint (PKCE S256; the auth method it offers)."""
    supported = metadata(provider).get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
    method = "client_secret_post" if "client_secret_post" in supported else "client_secret_basic"
    return OAuth2Session(
        provider.client_id, provider.client_secret,
        scope=" ".join(provider.scopes) if scope else None, redirect_uri=redirect_uri,
        code_challenge_method="S256", token_endpoint_auth_method=method, default_timeout=http_timeout(),
    )


def verify_id_token(provider: Provider, id_token: str, nonce: str | None) -> dict:
    """The ID token's claims, after checking its signature (the provider's JWKS), issuer,
    audience, expiry and nonce."""
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
                raise OAuthFailure(classified_as("protocol_error", f"The ID token could not be verified: {exc}")) from exc
        except ValueError as exc:
            raise OAuthFailure(classified_as("protocol_error", f"The ID token is malformed: {exc}")) from exc
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
        raise OAuthFailure(classified_as("protocol_error", f"The ID token was refused: {exc}")) from exc
    return claims


def address_from_claims(provider: Provider, claims: dict) -> str:
    """The mailbox address the ID token vouches for (Microsoft: email, else preferred_username)."""
    if provider.name == "microsoft":
        value = claims.get("email") or claims.get("preferred_username")
    else:
        if claims.get("email_verified") is False:
            raise OAuthFailure(classified_as("protocol_error", "Google says the account's address is not verified."),
                               "Google says this account's email address is not verified.")
        value = claims.get("email")
    try:
        return normalise_address(value or "")
    except ValueError:
        raise OAuthFailure(classified_as("consent_missing", f"The ID token names no email address ({sorted(claims)})."),
                           f"{provider.title} did not tell us the account's email address: "
                           "allow the CRM to see it (the email scope).", ("email",)) from None


# -- scopes ------------------------------------------------------------------------------------
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
