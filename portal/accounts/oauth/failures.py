"""OAuth failures in DESIGN.md's reasons: the provider's error codes and words, and anything
raised while talking to its endpoints. An OAuthFailure carries `classified`, which the sync
and the pages take at its word."""
from __future__ import annotations

import re

import requests
from authlib.integrations.base_client.errors import OAuthError

from portal.mail.errors import REFUSAL_REASONS, Classified, classify_text, plain_words


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
    return classified_as(reason, words, retry_after=by_words.retry_after)


def classified_as(reason: str, detail: str, retry_after: float | None = None) -> Classified:
    """A classification the OAuth layer decided itself (the provider's words kept, clipped)."""
    return Classified(reason=reason, refusal=reason in REFUSAL_REASONS, detail=detail[:2000],
                      retry_after=retry_after)


def failure_of(exc: Exception, what: str) -> OAuthFailure:
    """An OAuthFailure for anything raised while talking to a provider's endpoint."""
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
        return OAuthFailure(classified_as(reason, detail, float(retry) if retry and retry.isdigit() else None))
    if isinstance(exc, requests.exceptions.SSLError):
        return OAuthFailure(classified_as("tls_error", f"{what}: {exc}"))
    if isinstance(exc, requests.RequestException):
        return OAuthFailure(classified_as("server_unreachable", f"{what}: {exc}"))
    if isinstance(exc, ValueError):
        return OAuthFailure(classified_as("protocol_error", f"{what}: {exc}"))
    return OAuthFailure(classified_as("protocol_error", f"{what}: {type(exc).__name__}: {exc}"))


def consent_failure(provider, missing: list[str], granted: list[str]) -> OAuthFailure:
    detail = (f"Scope not granted: {' '.join(missing)} (required: {' '.join(provider.scopes)}; "
              f"granted: {' '.join(granted) or 'none'})")
    message = (f"{provider.title} did not grant the CRM every permission it needs: {', '.join(missing)} "
               "is missing. Connect again and allow all the requested permissions; if your organisation "
               "manages consent, ask IT to grant them to the CRM application.")
    return OAuthFailure(classified_as("consent_missing", detail), message, tuple(missing))
