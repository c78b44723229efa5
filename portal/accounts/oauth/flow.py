"""The authorization-code flow with PKCE (S256), state and nonce, through authlib: the URL to
send the browser to, the flow's secrets waiting in Redis bound to the user who began it,
and the code exchanged for tokens and a verified ID token at the callback."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from authlib.common.security import generate_token

from portal.accounts.oauth.failures import OAuthFailure, classified_as, failure_of
from portal.accounts.oauth.providers import (
    Provider,
    address_from_claims,
    granted_scopes,
    metadata,
    missing_scopes,
    oauth_client,
    verify_id_token,
)
from portal.accounts.oauth.tokens import mark_app_credentials_invalid
from portal.models import Mailbox
from portal.queue import get_redis

FLOW_TTL_SECONDS = 900


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
    md = metadata(provider)
    flow = Flow(state=generate_token(32), provider=provider.name, user_id=user.id,
                verifier=generate_token(64), nonce=generate_token(24), redirect_uri=redirect_uri,
                mailbox_id=mailbox.id if mailbox else None, address=mailbox.address if mailbox else None)
    params = dict(provider.authorize_params)
    if mailbox is not None:
        params["login_hint"] = mailbox.address
    url, _state = oauth_client(provider, redirect_uri).create_authorization_url(
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
    client = oauth_client(provider, flow.redirect_uri)
    try:
        token = dict(client.fetch_token(md["token_endpoint"], code=code, code_verifier=flow.verifier,
                                        grant_type="authorization_code"))
    except Exception as exc:
        failure = failure_of(exc, f"{provider.title}'s token endpoint")
        if failure.reason == "app_credentials_invalid":
            mark_app_credentials_invalid(provider, failure.classified)
        raise failure from exc
    if not token.get("access_token"):
        raise OAuthFailure(classified_as("protocol_error", "The token response has no access_token."))
    if not token.get("id_token"):
        raise OAuthFailure(classified_as("consent_missing", "The token response has no ID token (openid scope)."),
                           missing_scopes=("openid",))
    claims = verify_id_token(provider, token["id_token"], flow.nonce)
    address = address_from_claims(provider, claims)
    return Authorization(provider, address, token, claims, granted_scopes(provider, token))
