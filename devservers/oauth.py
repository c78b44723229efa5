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

The records it keeps are in devservers.oauth_records; authlib's grant and endpoint classes
over them in devservers.oauth_grants.
"""
from __future__ import annotations

import secrets
import threading
import time
from html import escape

from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749.errors import OAuth2Error
from authlib.oauth2.rfc6749.util import scope_to_list
from flask import Flask, jsonify, make_response, request
from joserfc.jwk import RSAKey
from werkzeug.serving import WSGIRequestHandler, make_server

from devservers.oauth_grants import build_authorization_server
from devservers.oauth_records import (
    GOOGLE_SCOPE_NAMES,
    MICROSOFT_TENANT_ID,
    OUTLOOK,
    RESOURCE_CLIENT_ID,
    RESOURCE_CLIENT_SECRET,
    WORDS,
    Account,
    AuthCode,
    Client,
    Grant,
    Token,
)
from devservers.process import HOST


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
        self.authorization_server = build_authorization_server(self)
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
