"""The real servers the tests, the demo and the benchmark start: Dovecot (IMAP), Redis, an
SMTP sink, a private PostgreSQL cluster (for tests that restart it), an OAuth 2.0 / OpenID
Connect authorization server standing in for Microsoft's and Google's, and the product's
own worker process.

Plain classes, no pytest: each one starts a real process or thread on free loopback ports
from a temp folder and is stopped by its own pid.  The recipes follow shared/TESTBED.md.
Nothing here imports the product (portal): the worker is started as `python worker.py`.

    with Dovecot() as imap, RedisServer() as redis, SmtpSink({"alice@example.test": "pw"}) as smtp:
        imap.add_user("alice@example.test", "alicepw")
        imap.append("alice@example.test", "INBOX", make_message(from_=..., to=..., subject="Hi"))
"""

from devservers.dovecot import Dovecot
from devservers.dovecot_mail import MAIL_GID, MAIL_UID
from devservers.messages import make_message
from devservers.oauth import Flavour, OAuthTestServer
from devservers.oauth_records import GMAIL, OUTLOOK
from devservers.postgres import PostgresServer
from devservers.process import ServerStartError, free_port
from devservers.redis_server import RedisServer
from devservers.smtp import SmtpSink
from devservers.worker import WorkerProcess, environment_of

__all__ = [
    "Dovecot",
    "RedisServer",
    "PostgresServer",
    "SmtpSink",
    "WorkerProcess",
    "OAuthTestServer",
    "Flavour",
    "make_message",
    "free_port",
    "ServerStartError",
    "environment_of",
    "MAIL_UID",
    "MAIL_GID",
    "OUTLOOK",
    "GMAIL",
]
