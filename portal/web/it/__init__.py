"""IT: every connected account with its OAuth scopes and token health, a CSV export, the audit log."""
from flask import Blueprint

bp = Blueprint("it", __name__, url_prefix="/it")

from portal.web.it import views  # noqa: E402,F401
