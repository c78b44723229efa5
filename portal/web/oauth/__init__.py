"""Connecting Microsoft 365 / Outlook and Google mailboxes with OAuth: connect, callback, reconnect."""
from flask import Blueprint

bp = Blueprint("oauth", __name__)

from portal.web.oauth import views  # noqa: E402,F401
