"""Customers, their Activities tab (the timeline of logged email) and opening one email."""
from flask import Blueprint

bp = Blueprint("customers", __name__)

from portal.web.customers import views  # noqa: E402,F401
