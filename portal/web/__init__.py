"""The web layer: every page area's blueprint and the API, registered here explicitly, with
the error pages, the security headers, the signed-in session and what templates may call.

Each area is a package: views.py holds its blueprint (`bp`) and routes; the role checks
every route goes through are roles.py; shared helpers are kit.py (paging, lookups, page or
fragment), filters.py (how values read), mailbox_listing.py (the ops lists).
"""
from flask import Flask

from portal.extensions import csrf
from portal.web import errors, filters, guards, headers
from portal.web.admin import addresses as admin_addresses
from portal.web.admin import users as admin_users
from portal.web.admin import views as admin
from portal.web.admin import webhooks as admin_webhooks
from portal.web.api import crm as api_crm
from portal.web.api import mailboxes as api_mailboxes
from portal.web.api import openapi as api_openapi
from portal.web.api import send as api_send
from portal.web.api import webhooks as api_webhooks
from portal.web.api.blueprint import bp as api_bp
from portal.web.auth import sessions
from portal.web.auth import views as auth
from portal.web.customers import views as customers
from portal.web.it import views as it
from portal.web.mailboxes import present
from portal.web.mailboxes import views as mailboxes
from portal.web.main import views as main
from portal.web.nav import nav_for
from portal.web.oauth import views as oauth
from portal.web.ops import views as ops
from portal.web.send import views as send
from portal.web.support import views as support

AREAS = (auth, main, mailboxes, customers, support, it, admin, oauth, send, ops)
# Modules whose routes join a blueprint defined elsewhere: imported for those routes.
MORE_ROUTES = (admin_addresses, admin_users, admin_webhooks, api_crm, api_mailboxes, api_openapi, api_send,
               api_webhooks)


def init_app(app: Flask) -> None:
    guards.init_app(app)  # before the routes: ids in URLs are bounded
    for area in AREAS:
        app.register_blueprint(area.bp)
    app.register_blueprint(api_bp, url_prefix="/api/v1")
    csrf.exempt(api_bp)  # the API takes bearer tokens only, never the session cookie
    sessions.init_app(app)
    errors.init_app(app)
    headers.init_app(app)
    filters.init_app(app)
    _template_globals(app)


def _template_globals(app: Flask) -> None:
    """What every template may call, beside the filters."""
    for name, value in {
        "nav_for": nav_for,
        "state_words": present.STATE_WORDS,
        "oauth_providers": oauth.oauth_providers,
        "oauth_provider": oauth.oauth_provider,
        "oauth_start_url": oauth.oauth_start_url,
        "send_form_state": send.send_form_state,
        "outgoing_for_email": send.outgoing_for_email,
        "outgoing_reason_words": send.outgoing_reason_words,
    }.items():
        app.add_template_global(value, name)
    app.context_processor(lambda: {"problem_mailboxes": present.problem_mailboxes})
