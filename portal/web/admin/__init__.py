"""Admin: users, roles and permissions; resync of one, some or all Problematic mailboxes;
run-time settings; queue and worker health."""
from flask import Blueprint

from portal.web.support.listing import register_filters

bp = Blueprint("admin", __name__, url_prefix="/admin")
register_filters(bp)

from portal.web.admin import views  # noqa: E402,F401
