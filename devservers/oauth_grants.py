"""authlib's server classes over one flavour's records: the authorization code grant with
PKCE and OpenID Connect ID tokens, the refresh grant (Microsoft rotates refresh tokens,
Google keeps them), revocation (RFC 7009) and introspection (RFC 7662)."""
from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import InvalidGrantError
from authlib.oauth2.rfc6749.util import scope_to_list
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oidc.core.grants import OpenIDCode

from devservers.oauth_records import RESOURCE_CLIENT_ID, WORDS, AuthCode, Grant, Token

if TYPE_CHECKING:
    from devservers.oauth import Flavour


def build_authorization_server(flavour: Flavour) -> AuthorizationServer:
    """The authlib server behind one flavour's /authorize, /token, /revoke and /introspect;
    it keeps codes, grants and tokens in the flavour's dicts (the caller holds its lock)."""

    def generate_token(grant_type, client, user=None, scope=None, expires_in=None,
                       include_refresh_token=True):
        token = {"token_type": "Bearer", "access_token": secrets.token_urlsafe(32),
                 "expires_in": flavour.access_token_lifetime, "scope": scope or ""}
        if include_refresh_token:
            token["refresh_token"] = secrets.token_urlsafe(40)
        return token

    def save_token(token: dict, req) -> None:
        account = req.user
        grant = flavour.grants[(account.address, req.client.client_id)]
        now, client_id, scope = time.time(), req.client.client_id, token.get("scope", "")
        flavour.tokens[token["access_token"]] = Token("access", token["access_token"], client_id, scope,
                                                      grant, now, int(token["expires_in"]))
        if token.get("refresh_token"):
            flavour.tokens[token["refresh_token"]] = Token("refresh", token["refresh_token"], client_id,
                                                           scope, grant, now, 0)

    server = AuthorizationServer(query_client=lambda cid: flavour.clients.get(cid),
                                 save_token=save_token)
    server.load_config({"OAUTH2_TOKEN_EXPIRES_IN": None})
    server.register_token_generator("default", generate_token)

    class CodeGrant(grants.AuthorizationCodeGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

        def save_authorization_code(self, code, req):
            requested = scope_to_list(req.payload.scope) or []
            granted = [s for s in requested if s not in flavour.unticked]
            account = req.user
            grant = flavour.grants.get((account.address, req.client.client_id))
            if grant is None or grant.revoked:
                grant = Grant(account, req.client.client_id, granted)
                flavour.grants[(account.address, req.client.client_id)] = grant
            else:
                grant.scopes = granted
            flavour.codes[code] = AuthCode(
                code=code, client_id=req.client.client_id, redirect_uri=req.payload.redirect_uri,
                scope=" ".join(granted), grant=grant, nonce=req.payload.data.get("nonce"),
                code_challenge=req.payload.data.get("code_challenge"),
                code_challenge_method=req.payload.data.get("code_challenge_method"),
                auth_time=int(time.time()),
            )
            flavour.authorizations.append({"account": account.address, "scope": granted,
                                           "params": dict(req.payload.data)})

        def query_authorization_code(self, code, client):
            item = flavour.codes.get(code)
            if item and item.client_id == client.get_client_id():
                return item
            return None

        def delete_authorization_code(self, authorization_code):
            flavour.codes.pop(authorization_code.code, None)

        def authenticate_user(self, authorization_code):
            return authorization_code.grant.account

    class RefreshGrant(grants.RefreshTokenGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
        INCLUDE_NEW_REFRESH_TOKEN = flavour.name == "microsoft"  # Google keeps its refresh token

        def authenticate_refresh_token(self, refresh_token):
            token = flavour.tokens.get(refresh_token)
            if token is None or token.kind != "refresh":
                return None
            if token.grant.revoked:
                raise InvalidGrantError(WORDS[flavour.name]["revoked"])
            if token.revoked:
                raise InvalidGrantError(WORDS[flavour.name]["spent"])
            return token

        def _validate_token_scope(self, token):
            asked = scope_to_list(self.request.payload.scope) or []
            missing = [s for s in asked if s not in token.grant.scopes]
            if missing:  # Microsoft: consent for a scope asked at refresh is gone
                raise InvalidGrantError(WORDS[flavour.name]["consent"].format(client_id=token.client_id))

        def issue_token(self, user, refresh_token):
            return self.generate_token(user=user, scope=" ".join(refresh_token.grant.scopes),
                                       include_refresh_token=self.INCLUDE_NEW_REFRESH_TOKEN)

        def authenticate_user(self, refresh_token):
            return refresh_token.grant.account

        def revoke_old_credential(self, refresh_token):
            if self.INCLUDE_NEW_REFRESH_TOKEN:
                refresh_token.revoked = True  # rotation: the old one is spent
            flavour.refreshes.append(refresh_token.grant.account.address)

    class IdToken(OpenIDCode):
        def exists_nonce(self, nonce, req):
            return any(c.nonce == nonce for c in flavour.codes.values())

        def resolve_client_private_key(self, client):
            return flavour.key

        def get_client_claims(self, client):
            return {"iss": flavour.issuer, "aud": client.get_client_id()}

        def get_encode_header(self, client):
            return {"alg": "RS256", "kid": flavour.key.kid, "typ": "JWT"}

        def generate_user_info(self, user, scope):
            return flavour._claims(user, scope_to_list(scope) or [])

    class Revocation(RevocationEndpoint):
        CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

        def query_token(self, token_string, token_type_hint):
            return flavour.tokens.get(token_string)

        def revoke_token(self, token, req):
            if token.kind == "refresh":
                token.grant.revoked = True  # revoking a refresh token ends the grant (Google)
            else:
                token.revoked = True

    class Introspection(IntrospectionEndpoint):
        CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

        def query_token(self, token_string, token_type_hint):
            token = flavour.tokens.get(token_string)
            return token if token is not None and token.kind == "access" else None

        def check_permission(self, token, client, req):
            return client.get_client_id() in (RESOURCE_CLIENT_ID, token.client_id)

        def introspect_token(self, token):
            return flavour._introspection_payload(token)

    server.register_grant(CodeGrant, [CodeChallenge(required=True), IdToken(require_nonce=False)])
    server.register_grant(RefreshGrant)
    server.register_endpoint(Revocation)
    server.register_endpoint(Introspection)
    return server
