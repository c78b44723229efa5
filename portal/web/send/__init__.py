"""The "Send email" form on a customer's Activities tab (htmx fragment) and its routes."""
from flask import Blueprint

bp = Blueprint("send", __name__)

from portal.web.send import views  # noqa: E402,F401
