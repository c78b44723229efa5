"""A real OAuth 2.0 / OpenID Connect authorization server for tests, built from authlib's
server classes and served over HTTP on a free loopback port from a thread.

It stands in for the live Microsoft and Google endpoints (which cannot be reached from
here), one "flavour" of each on the same server under /microsoft and /google:

- discovery document (`/<flavour>/.well-known/openid-configuration`) and JWKS; ID tokens
  are RS256 JWTs signed with joserfc;
- `/authorize`: authorization code with PKCE (S256) and state, auto-approved as the account
  a test chose, optionally with some scopes unticked (Google's granular consent);
- `/token`: code and refresh grants; Microsoft's flavour rotates refresh tokens (a spent one
  answers `invalid_grant`), Google's keeps the refresh token, as the real ones do;
- `/revoke` (RFC 7009) and `/introspect` (RFC 7662). The root `/introspect` serves Dovecot's
  oauth2 passdb for both flavours: `{"active": true, "username": ...}` only for a live,
  unexpired, unrevoked access token (Dovecot does not check `exp` itself).

Knobs on each flavour reach every failure the product must handle: choose the account,
untick a scope, withdraw a scope from a grant, expire access tokens, revoke a grant, reject
the client secret (with the provider's words), answer 5xx.

    with OAuthTestServer() as server:
        ms = server.flavour("microsoft")
        ms.register_client("client-id", "secret", ["http://localhost/oauth/microsoft/callback"])
        ms.choose_account("alice@example.test")
"""
from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field

from flask import Flask, jsonify, make_response, request
from joserfc.jwk import RSAKey
from werkzeug.serving import WSGIRequestHandler, make_server

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc6749.errors import InvalidGrantError, OAuth2Error
from authlib.oauth2.rfc6749.util import scope_to_list
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oidc.core.grants import OpenIDCode

HOST = "127.0.0.1"
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


class Flavour:
    """One provider's authorization server (Microsoft- or Google-like) with test knobs."""

    def __init__(self, server: "OAuthTestServer", name: str):
        if name not in WORDS:
            raise ValueError(f"unknown flavour {name!r}")
        self.server, self.name = server, name
        self.lock = server.lock
        self.key = RSAKey.generate_key(2048, parameters={"kid": f"{name}-{secrets.token_hex(4)}",
                                                         "use": "sig", "alg": "RS256"})
        self.clients: dict[str, Client] = {}
        self.accounts: dict[str, Account] = {}
        self.grants: dict[tuple[str, str], Grant] = {}
        self.codes: dict[str, AuthCode] = {}
        self.tokens: dict[str, Token] = {}
        self.access_token_lifetime = 3600
        self.include_email_claim = True  # Microsoft: without it the address is preferred_username
        # knobs
        self.account: str | None = None
        # True: /authorize shows a sign-in and consent page (account, a box per scope, Accept),
        # as the real providers do; a browser test fills it in. False: auto-approved as `account`.
        self.interactive = False
        self.unticked: set[str] = set()
        self.secret_rejected = False
        self.secret_words = "expired_secret"
        self._failures: list[int] = []
        self._authorize_error: tuple[str, str] | None = None
        # what happened
        self.refreshes: list[str] = []  # address of each successful refresh
        self.token_errors: list[dict] = []
        self.authorizations: list[dict] = []
        self.authorization_server = self._build()
        self.register_client(RESOURCE_CLIENT_ID, RESOURCE_CLIENT_SECRET, [])

    # ---- URLs -------------------------------------------------------------------------
    @property
    def base(self) -> str:
        return f"{self.server.url}/{self.name}"

    @property
    def metadata_url(self) -> str:
        return f"{self.base}/.well-known/openid-configuration"

    @property
    def issuer(self) -> str:
        """The issuer of this flavour's ID tokens (Microsoft's names the tenant)."""
        return f"{self.base}/{MICROSOFT_TENANT_ID}/v2.0" if self.name == "microsoft" else self.base

    def metadata(self) -> dict:
        return {
            # Microsoft's "common" document has a template for the tenant in its issuer.
            "issuer": f"{self.base}/{{tenantid}}/v2.0" if self.name == "microsoft" else self.base,
            "authorization_endpoint": f"{self.base}/authorize",
            "token_endpoint": f"{self.base}/token",
            "revocation_endpoint": f"{self.base}/revoke",
            "introspection_endpoint": f"{self.base}/introspect",
            "jwks_uri": f"{self.base}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "email", "profile", "offline_access"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "code_challenge_methods_supported": ["plain", "S256"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
        }

    # ---- knobs ------------------------------------------------------------------------
    def register_client(self, client_id: str, client_secret: str, redirect_uris: list[str]) -> Client:
        with self.lock:
            client = Client(client_id, client_secret, list(redirect_uris), self)
            self.clients[client_id] = client
            return client

    def choose_account(self, address: str) -> None:
        """The account the next /authorize signs in as (the user's choice at the provider)."""
        with self.lock:
            self.account = address
            self.accounts.setdefault(address, Account(address))

    def untick(self, *scopes: str) -> None:
        """The next consents leave these scopes out (Google's granular consent)."""
        with self.lock:
            self.unticked = set(scopes)

    def withdraw_scope(self, address: str, scope: str) -> None:
        """An existing grant loses a scope (a user or a tenant takes consent back)."""
        with self.lock:
            for grant in self._grants_of(address):
                grant.scopes = [s for s in grant.scopes if s != scope]

    def expire_access_tokens(self, address: str) -> int:
        """Every live access token of the account expires now; returns how many."""
        with self.lock:
            n = 0
            for token in self.tokens.values():
                if token.kind == "access" and token.grant.account.address == address and not token.is_expired():
                    token.issued_at = time.time() - token.expires_in - 1
                    n += 1
            return n

    def revoke_grant(self, address: str) -> None:
        """The grant is revoked (password reset, admin action): every token of it dies."""
        with self.lock:
            for grant in self._grants_of(address):
                grant.revoked = True

    def reject_client_secret(self, words: str = "expired_secret") -> None:
        """The token endpoint refuses the client secret with the provider's words
        (`expired_secret`: AADSTS7000222; `bad_secret`: AADSTS7000215)."""
        with self.lock:
            self.secret_rejected, self.secret_words = True, words

    def accept_client_secret(self) -> None:
        with self.lock:
            self.secret_rejected = False

    def fail_next(self, n: int = 1, status: int = 503) -> None:
        """The next n token endpoint requests answer an HTTP `status` page."""
        with self.lock:
            self._failures = [status] * n

    def refuse_next_authorization(self, error: str, description: str) -> None:
        """The next /authorize redirects back with this error (the user declined, say)."""
        with self.lock:
            self._authorize_error = (error, description)

    def live_access_tokens(self, address: str) -> list[str]:
        with self.lock:
            return [t.value for t in self.tokens.values() if t.kind == "access"
                    and t.grant.account.address == address and not (t.is_expired() or t.is_revoked())]

    def refresh_tokens(self, address: str) -> list[Token]:
        with self.lock:
            return [t for t in self.tokens.values() if t.kind == "refresh" and t.grant.account.address == address]

    def introspect(self, access_token: str) -> dict:
        """What the introspection endpoint answers for this token (for SMTP's token check)."""
        with self.lock:
            token = self.tokens.get(access_token)
            if token is None or token.kind != "access" or token.is_expired() or token.is_revoked():
                return {"active": False}
            return self._introspection_payload(token)

    def _grants_of(self, address: str) -> list[Grant]:
        return [g for (addr, _c), g in self.grants.items() if addr == address]

    # ---- the authlib server -----------------------------------------------------------
    def _build(self) -> AuthorizationServer:
        flavour = self
        server = AuthorizationServer(query_client=lambda cid: flavour.clients.get(cid),
                                     save_token=self._save_token)
        server.load_config({"OAUTH2_TOKEN_EXPIRES_IN": None})
        server.register_token_generator("default", self._generate_token)

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

    def _generate_token(self, grant_type, client, user=None, scope=None, expires_in=None,
                        include_refresh_token=True):
        token = {"token_type": "Bearer", "access_token": secrets.token_urlsafe(32),
                 "expires_in": self.access_token_lifetime, "scope": scope or ""}
        if include_refresh_token:
            token["refresh_token"] = secrets.token_urlsafe(40)
        return token

    def _save_token(self, token: dict, req) -> None:
        account = req.user
        grant = self.grants[(account.address, req.client.client_id)]
        now = time.time()
        self.tokens[token["access_token"]] = Token("access", token["access_token"], req.client.client_id,
                                                   token.get("scope", ""), grant, now, int(token["expires_in"]))
        if token.get("refresh_token"):
            self.tokens[token["refresh_token"]] = Token("refresh", token["refresh_token"], req.client.client_id,
                                                        token.get("scope", ""), grant, now, 0)

    def _claims(self, account: Account, scopes: list[str]) -> dict:
        if self.name == "microsoft":
            claims = {"sub": account.sub, "oid": account.sub, "tid": MICROSOFT_TENANT_ID, "ver": "2.0",
                      "preferred_username": account.address}
            if "profile" in scopes:
                claims["name"] = account.name
            if "email" in scopes and self.include_email_claim:
                claims["email"] = account.address
            return claims
        claims = {"sub": account.sub}
        if "email" in scopes:
            claims.update(email=account.address, email_verified=True)
        if "profile" in scopes:
            claims["name"] = account.name
        return claims

    def _introspection_payload(self, token: Token) -> dict:
        return {"active": True, "username": token.grant.account.address, "client_id": token.client_id,
                "scope": token.scope, "token_type": "Bearer", "sub": token.grant.account.sub,
                "exp": int(token.issued_at + token.expires_in), "iat": int(token.issued_at),
                "iss": self.issuer}

    def _response_scope(self, scope: str) -> str:
        """The scope string as each provider writes it back: Microsoft names only the
        resource's scopes; Google spells email and profile as its userinfo URLs."""
        scopes = scope.split()
        if self.name == "microsoft":
            return " ".join(s for s in scopes if s.startswith(OUTLOOK))
        return " ".join(GOOGLE_SCOPE_NAMES.get(s, s) for s in scopes)

    # ---- HTTP handlers (called by the server's Flask app) -----------------------------
    def handle_authorize(self):
        with self.lock:
            if self._authorize_error is not None:
                error, description = self._authorize_error
                self._authorize_error = None
                target = request.args.get("redirect_uri", "")
                from authlib.common.urls import add_params_to_uri

                params = [("error", error), ("error_description", description)]
                if request.args.get("state"):
                    params.append(("state", request.args["state"]))
                return make_response("", 302, {"Location": add_params_to_uri(target, params)})
            if self.interactive and request.method == "GET":
                return self._consent_page()
            if self.interactive:  # the consent page's Accept: its account and the boxes left ticked
                self.account = request.form.get("account", "").strip().lower() or None
                if self.account:
                    self.accounts.setdefault(self.account, Account(self.account))
                asked = scope_to_list(request.args.get("scope")) or []
                self.unticked = set(asked) - set(request.form.getlist("granted"))
            if self.account is None:
                return make_response("no account chosen by the test", 400)
            account = self.accounts[self.account]
            try:
                grant = self.authorization_server.get_consent_grant(end_user=account)
            except OAuth2Error as error:
                return self.authorization_server.handle_error_response(None, error)
            return self.authorization_server.create_authorization_response(grant_user=account, grant=grant)

    def _consent_page(self):
        """What a person sees at the provider: who signs in, what the app asks for, Accept."""
        from html import escape

        title = {"microsoft": "Microsoft", "google": "Google"}[self.name]
        asked = scope_to_list(request.args.get("scope")) or []
        boxes = "\n".join(
            f'<li><label><input type="checkbox" name="granted" value="{escape(s)}" checked> {escape(s)}</label></li>'
            for s in asked)
        page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Sign in to your account · {title} (test provider)</title></head><body>
<h1>Sign in to {title}</h1>
<form method="post">
<p><label for="account">Email address</label>
<input id="account" name="account" type="email" value="{escape(request.args.get('login_hint') or self.account or '')}"></p>
<p>The app asks for these permissions:</p>
<ul>{boxes}</ul>
<button type="submit">Accept</button>
</form></body></html>"""
        return make_response(page, 200, {"Content-Type": "text/html; charset=utf-8"})

    def handle_token(self):
        with self.lock:
            if self._failures:
                status = self._failures.pop(0)
                return make_response("<html><body><h1>Service Unavailable</h1></body></html>", status,
                                     {"Content-Type": "text/html"})
            response = self.authorization_server.create_token_response()
            body = response.get_json(silent=True) or {}
            if response.status_code != 200:
                if body.get("error") == "invalid_client":
                    words = self.secret_words if self.secret_rejected else "bad_secret"
                    client_id = request.form.get("client_id") or "?"
                    body = {"error": "invalid_client",
                            "error_description": WORDS[self.name][words].format(client_id=client_id)}
                    response = make_response(jsonify(body), 401)
                self.token_errors.append(body)
                return response
            if "scope" in body:
                body["scope"] = self._response_scope(body["scope"])
                response = make_response(jsonify(body), 200)
                response.headers["Cache-Control"] = "no-store"
            return response

    def handle_revoke(self):
        with self.lock:
            return self.authorization_server.create_endpoint_response("revocation")

    def handle_introspect(self):
        with self.lock:
            return self.authorization_server.create_endpoint_response("introspection")


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):  # one line per request drowns the test output
        pass


class OAuthTestServer:
    """The HTTP server for both flavours, in a thread on a free loopback port."""

    def __init__(self):
        self.lock = threading.RLock()
        self.app = Flask("eis-oauth-test-server")
        self._http = make_server(HOST, 0, self.app, threaded=True, request_handler=_QuietHandler)
        self.port = self._http.server_port
        self.url = f"http://{HOST}:{self.port}"
        self.flavours = {name: Flavour(self, name) for name in ("microsoft", "google")}
        self.introspections: list[tuple[str, bool]] = []  # (username or "", active) per call
        self._routes()
        self._thread: threading.Thread | None = None

    @property
    def introspection_url(self) -> str:
        """For Dovecot: introspection with the mail server's client credentials."""
        return f"http://{RESOURCE_CLIENT_ID}:{RESOURCE_CLIENT_SECRET}@{HOST}:{self.port}/introspect"

    def flavour(self, name: str) -> Flavour:
        return self.flavours[name]

    def start(self) -> "OAuthTestServer":
        if self._thread is None:
            self._thread = threading.Thread(target=self._http.serve_forever, name="oauth-test-server",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join(5)
            self._thread = None
        self._http.server_close()

    def __enter__(self) -> "OAuthTestServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _routes(self) -> None:
        app = self.app

        def flavour_or_404(name):
            flavour = self.flavours.get(name)
            if flavour is None:
                return None
            return flavour

        @app.get("/<name>/.well-known/openid-configuration")
        def discovery(name):
            flavour = flavour_or_404(name)
            return jsonify(flavour.metadata()) if flavour else ("", 404)

        @app.get("/<name>/jwks")
        def jwks(name):
            flavour = flavour_or_404(name)
            return jsonify({"keys": [flavour.key.as_dict(private=False)]}) if flavour else ("", 404)

        @app.route("/<name>/authorize", methods=["GET", "POST"])
        def authorize(name):
            flavour = flavour_or_404(name)
            return flavour.handle_authorize() if flavour else ("", 404)

        @app.post("/<name>/token")
        def token(name):
            flavour = flavour_or_404(name)
            return flavour.handle_token() if flavour else ("", 404)

        @app.post("/<name>/revoke")
        def revoke(name):
            flavour = flavour_or_404(name)
            return flavour.handle_revoke() if flavour else ("", 404)

        @app.post("/<name>/introspect")
        def introspect_one(name):
            flavour = flavour_or_404(name)
            return flavour.handle_introspect() if flavour else ("", 404)

        @app.post("/introspect")
        def introspect():
            """Dovecot's endpoint: the flavour that issued the token answers."""
            value = request.form.get("token", "")
            with self.lock:
                owner = next((f for f in self.flavours.values() if value in f.tokens), None)
                response = owner.handle_introspect() if owner else None
                if response is None:
                    auth = request.authorization
                    if auth is None or (auth.username, auth.password) != (RESOURCE_CLIENT_ID, RESOURCE_CLIENT_SECRET):
                        response = make_response(jsonify(error="invalid_client"), 401)
                    else:
                        response = make_response(jsonify(active=False), 200)
                body = response.get_json(silent=True) or {}
                self.introspections.append((body.get("username", ""), bool(body.get("active"))))
                return response
