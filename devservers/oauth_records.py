"""What the OAuth test server knows: the providers' constants and words, and the records
authlib's server classes work on (accounts, clients, grants, codes, tokens)."""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin

if TYPE_CHECKING:
    from devservers.oauth import Flavour

MICROSOFT_TENANT_ID = "9188040d-6c67-4c5b-b112-36a304b66dad"
OUTLOOK = "https://outlook.office.com/"
GMAIL = "https://mail.google.com/"
GOOGLE_SCOPE_NAMES = {  # what Google writes back for the short OIDC scopes
    "email": "https://www.googleapis.com/auth/userinfo.email",
    "profile": "https://www.googleapis.com/auth/userinfo.profile",
}
RESOURCE_CLIENT_ID = "mail-server"  # Dovecot's credentials for introspection
RESOURCE_CLIENT_SECRET = "mail-server-secret"

# The providers' own words for the refusals tests provoke.
WORDS = {
    "microsoft": {
        "revoked": ("AADSTS50173: The provided grant has expired due to it being revoked, a fresh "
                    "auth token is needed. The user might have changed or reset their password."),
        "spent": ("AADSTS70008: The provided authorization code or refresh token has expired due to "
                  "inactivity. Send a new interactive authorization request for this user and resource."),
        "bad_secret": "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in "
                      "the request is the client secret value, not the client secret ID.",
        "expired_secret": "AADSTS7000222: The provided client secret keys for app '{client_id}' are "
                          "expired. Visit the Azure portal to create new keys for your app.",
        "consent": ("AADSTS65001: The user or administrator has not consented to use the application "
                    "with ID '{client_id}' named 'EIS test'. Send an interactive authorization request "
                    "for this user and resource."),
    },
    "google": {
        "revoked": "Token has been expired or revoked.",
        "spent": "Token has been expired or revoked.",
        "bad_secret": "Unauthorized",
        "expired_secret": "The OAuth client was deleted.",
        "consent": "Token has been expired or revoked.",
    },
}


@dataclass(eq=False)
class Account:
    address: str
    sub: str = field(default_factory=lambda: secrets.token_hex(8))
    name: str = "Test User"

    def get_user_id(self) -> str:
        return self.sub


@dataclass(eq=False)
class Client(ClientMixin):
    client_id: str
    client_secret: str
    redirect_uris: list[str]
    flavour: "Flavour | None" = None

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return self.redirect_uris[0] if self.redirect_uris else None

    def get_allowed_scope(self, scope):
        return scope

    def check_redirect_uri(self, redirect_uri):
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret):
        if self.flavour is not None and self.flavour.secret_rejected and self.client_id != RESOURCE_CLIENT_ID:
            return False
        return secrets.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method, endpoint):
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type):
        return response_type == "code"

    def check_grant_type(self, grant_type):
        return grant_type in ("authorization_code", "refresh_token")


@dataclass(eq=False)
class Grant:
    """One account's consent to one client: the scopes it holds, and whether it was revoked."""
    account: Account
    client_id: str
    scopes: list[str]
    revoked: bool = False


@dataclass(eq=False)
class AuthCode:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    grant: Grant
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope

    def get_nonce(self):
        return self.nonce

    def get_auth_time(self):
        return self.auth_time

    def get_acr(self):
        return None

    def get_amr(self):
        return None


@dataclass(eq=False)
class Token(TokenMixin):
    """An access token, or a refresh token (`kind`); both belong to a grant."""
    kind: str  # "access" | "refresh"
    value: str
    client_id: str
    scope: str
    grant: Grant
    issued_at: float
    expires_in: int
    revoked: bool = False  # access: revoked; refresh: spent by rotation or revoked

    def check_client(self, client):
        return client.get_client_id() == self.client_id

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return self.expires_in

    def is_expired(self):
        return self.kind == "access" and time.time() >= self.issued_at + self.expires_in

    def is_revoked(self):
        return self.revoked or self.grant.revoked

    def get_user(self):
        return self.grant.account

    def get_client(self):
        return None
