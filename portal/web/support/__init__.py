"""Support: every mailbox, Problematic first; one mailbox's history, runs and troubleshooting;
"why was / wasn't this email logged?"; Sync now."""
from flask import Blueprint

bp = Blueprint("support", __name__, url_prefix="/support")

from portal.web.support import views  # noqa: E402,F401
