"""Admin: users, roles and permissions; resync of one, some or all Problematic mailboxes;
run-time settings; queue and worker health."""
from flask import Blueprint

bp = Blueprint("admin", __name__, url_prefix="/admin")

from portal.web.admin import users, views  # noqa: E402,F401
