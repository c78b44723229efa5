"""Support: every mailbox, Problematic first; one mailbox's history, runs and troubleshooting;
"why was / wasn't this email logged?"; Sync now."""
from flask import Blueprint

from portal.web.support.listing import register_filters

bp = Blueprint("support", __name__, url_prefix="/support")
register_filters(bp)

from portal.web.support import views  # noqa: E402,F401
