"""Reps, their mailboxes on the OAuth Dovecot, and a trip through the OAuth flow, shared by
the OAuth tests (Flask test client) and the browser journeys (Chromium).

The parts are real: devservers/oauth.py (authlib's server classes) stands in for the live
Microsoft and Google endpoints, which cannot be reached from here; a Dovecot whose oauth2
passdb asks that server about every XOAUTH2 token; an aiosmtpd server that checks SMTP
XOAUTH2 tokens the same way (the fixtures in tests/conftest.py).
"""
import html
import json
import re
import uuid
from datetime import timedelta
from urllib.parse import urlsplit

import requests
from sqlalchemy import select

from portal import crypto
from portal.extensions import db
from portal.models import Mailbox
from portal.timeutil import utcnow
from tests.mailworld import MailWorld


class OAuthWorld:
    """Reps, their mailboxes on the OAuth Dovecot, and the browser's trip through the flow."""

    def __init__(self, app, world, server, dovecot, sink, redirect_bases: tuple[str, ...] = ()):
        self.app, self.world, self.server, self.dovecot, self.sink = app, world, server, dovecot, sink
        self.mail = MailWorld(app, world, dovecot)
        self.tag = self.mail.tag
        self.client_ids = {}
        for name in ("microsoft", "google"):
            client_id, secret = f"eis-{name}-{self.tag}", uuid.uuid4().hex
            self.server.flavour(name).register_client(
                client_id, secret, [f"{base}/oauth/{name}/callback" for base in ("http://localhost", *redirect_bases)])
            self.client_ids[name] = client_id
            prefix = f"EIS_{name.upper()}_"
            app.config.update({
                prefix + "CLIENT_ID": client_id, prefix + "CLIENT_SECRET": secret,
                prefix + "METADATA_URL": self.server.flavour(name).metadata_url,
                prefix + "IMAP_HOST": "127.0.0.1", prefix + "IMAP_PORT": dovecot.imaps_port,
                prefix + "IMAP_SECURITY": "ssl",
                prefix + "SMTP_HOST": "127.0.0.1", prefix + "SMTP_PORT": sink.port, prefix + "SMTP_SECURITY": "none",
            })
        app.config["EIS_TLS_CA_FILE"] = str(dovecot.cert_path)

    def flavour(self, name):
        return self.server.flavour(name)

    def address(self, local: str) -> str:
        """A mailbox on the OAuth Dovecot (its password only for the tests' APPENDs)."""
        return self.mail.imap_user(local, "append-only-pw")

    def rep(self, local: str):
        user = self.world.user(f"{local}-{self.tag}@crm.test", "rep")
        return user, self.world.login(user)

    # -- the browser's trip --------------------------------------------------------------------
    def click(self, client, provider: str, *, path: str | None = None):
        """Press "Connect Outlook"/"Connect Google" on the rep's page (or Reconnect on the
        page at `path`): the link's GET; returns the provider's authorization URL it redirects to."""
        if path is None:
            page = client.get("/mailboxes").get_data(as_text=True)
            label = {"microsoft": "Connect Outlook", "google": "Connect Google"}[provider]
        else:
            page = client.get(path).get_data(as_text=True)
            label = "Reconnect"
        r = client.get(link_with(page, label))
        assert r.status_code == 302, r.get_data(as_text=True)
        return r.headers["Location"]

    def at_provider(self, authorize_url: str) -> str:
        """The browser at the provider (auto-approved as the chosen account); the callback path."""
        assert authorize_url.startswith(self.server.url), authorize_url
        r = requests.get(authorize_url, allow_redirects=False, timeout=10)
        assert r.status_code == 302, r.text
        back = urlsplit(r.headers["Location"])
        assert back.netloc == "localhost", back
        return f"{back.path}?{back.query}"

    def connect(self, client, provider: str, account: str, *, path: str | None = None):
        """The whole trip; returns the response to the callback."""
        self.flavour(provider).choose_account(account)
        callback = self.at_provider(self.click(client, provider, path=path))
        return client.get(callback)

    def reconnect(self, client, mailbox: Mailbox, account: str | None = None):
        return self.connect(client, mailbox.provider, account or mailbox.address,
                            path=f"/mailboxes/{mailbox.id}/reconnect")

    def mailbox_of(self, address: str) -> Mailbox:
        return db.session.scalars(select(Mailbox).where(Mailbox.address == address,
                                                        Mailbox.state != "disconnected")).one()

    def sync(self, mailbox: Mailbox, trigger: str = "manual"):
        return self.mail.sync(mailbox, trigger)

    def tokens(self, mailbox: Mailbox) -> dict:
        db.session.refresh(mailbox)
        return json.loads(crypto.decrypt(mailbox.secret_encrypted))

    def make_due(self, mailbox: Mailbox) -> None:
        """The stored token is about to expire (the provider still honours it)."""
        mailbox.token_expires_at = utcnow() + timedelta(seconds=30)
        db.session.commit()


def link_with(page: str, label: str) -> str:
    """The href of the link whose text holds `label` (entities as Jinja writes them)."""
    for href, text in re.findall(r'<a\b[^>]*href="([^"]+)"[^>]*>(.*?)</a>', page, re.DOTALL):
        if label in text:
            return html.unescape(href)
    raise AssertionError(f"no link with {label!r} on the page")


def flashes(client) -> str:
    return client.get("/mailboxes").get_data(as_text=True)


def introspection_checker(oauth_server):
    """For the SMTP server: a token is good when the authorization server says it is live."""
    def token_checker(user: str, token: str) -> bool:
        answer = requests.post(f"{oauth_server.url}/introspect", data={"token": token}, timeout=10,
                               auth=("mail-server", "mail-server-secret")).json()
        return bool(answer.get("active")) and answer.get("username") == user

    return token_checker
