"""The authorization-code flow, from the "Connect Outlook" / "Connect Google" button to the
mailbox linked to the signed-in user (and no one else).

connect and reconnect are links (GET) that send the browser to the provider; the callback
takes the flow back by its state, only for the user who began it in this browser session,
exchanges the code, checks the account and the scopes, tries IMAP, and links.

Why links and not forms: a form's POST that answers with a redirect to the provider is a
form submission to another origin, and the portal's CSP says `form-action 'self'`. Chromium
(and CSP Level 3) checks form-action on every redirect of the submission, so the browser
never left the portal. Listing the providers' origins in form-action is not enough either:
Microsoft's authorize endpoint may redirect on to other hosts (login.live.com) within the
same navigation. A link is a plain navigation, which no CSP directive governs in Chromium,
Firefox or Safari, so the CSP stays as strict as everywhere else. The link carries a token
bound to the user, the session, the provider and the mailbox (an hour long), so another
site cannot start a flow in a rep's browser; the flow's state is bound to the session as before.
"""
import logging
import secrets

from flask import Blueprint, abort, current_app, flash, redirect, request, session, url_for
from flask_login import current_user
from itsdangerous import BadSignature, URLSafeTimedSerializer
from redis.exceptions import RedisError

from portal.accounts import linking, state
from portal.accounts.oauth import flow as oauth_flow
from portal.accounts.oauth.failures import OAuthFailure, classify_oauth_error
from portal.accounts.oauth.providers import Provider, all_providers, get_provider
from portal.extensions import db
from portal.mail.errors import plain_words
from portal.models import Mailbox
from portal.models.audit import record
from portal.web.kit import MAX_ID
from portal.web.mailboxes.present import announce_linked
from portal.web.roles import ALL_ROLES, roles_required

bp = Blueprint("oauth", __name__)

log = logging.getLogger(__name__)
SESSION_KEY = "eis_oauth_states"  # the states begun in this browser session
START_KEY = "eis_oauth_start"  # a random value per browser session that start links are bound to
START_MAX_AGE = 3600
MAX_PENDING = 5


def oauth_providers():
    return all_providers()


def oauth_provider(name):
    return get_provider(name)


def _start_signer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key, salt="eis-oauth-start")


def oauth_start_url(provider: str, mailbox_id: int | None = None) -> str:
    """The link that starts Connect (or Reconnect of `mailbox_id`) with `provider`."""
    nonce = session.get(START_KEY)
    if not nonce:
        nonce = session[START_KEY] = secrets.token_urlsafe(16)
    token = _start_signer().dumps([current_user.id, provider, mailbox_id, nonce])
    if mailbox_id is None:
        return url_for("oauth.connect", provider=provider, t=token)
    return url_for("oauth.reconnect", provider=provider, mailbox_id=mailbox_id, t=token)


def _check_start_token(provider: str, mailbox_id: int | None) -> None:
    """Only a link the portal gave this user in this browser session starts a flow."""
    try:
        user_id, name, box, nonce = _start_signer().loads(request.args.get("t", ""), max_age=START_MAX_AGE)
    except (BadSignature, ValueError, TypeError):
        user_id = name = box = nonce = None
    expected = [current_user.id, provider, mailbox_id, session.get(START_KEY)]
    if not session.get(START_KEY) or [user_id, name, box, nonce] != expected:
        flash("That sign-in link has expired or is not yours. Press the button again.", "error")
        abort(redirect(_accounts_url()))


def _provider_or_404(name: str) -> Provider:
    provider = get_provider(name)
    if provider is None:
        abort(404, description="There is no such email provider.")
    return provider


def _accounts_url() -> str:
    if "mailboxes.mine" in current_app.view_functions:
        return url_for("mailboxes.mine")
    return url_for("main.index")


def _redirect_uri(provider: Provider) -> str:
    """The callback URL registered with the provider; EIS_OAUTH_REDIRECT_BASE_URL behind a proxy."""
    base = current_app.config.get("EIS_OAUTH_REDIRECT_BASE_URL")
    if base:
        return base.rstrip("/") + url_for("oauth.callback", provider=provider.name)
    return url_for("oauth.callback", provider=provider.name, _external=True)


def _not_configured(provider: Provider):
    flash(f"Connecting {provider.title} accounts is not configured on this server yet. Your CRM administrator "
          "can turn it on.", "error")
    return redirect(_accounts_url())


def _begin(provider: Provider, mailbox: Mailbox | None = None):
    try:
        url, flow = oauth_flow.begin_authorization(provider, current_user, _redirect_uri(provider), mailbox)
    except OAuthFailure as exc:
        flash(f"{provider.title}'s sign-in service cannot be reached right now; please try again in a moment. "
              f"({exc.classified.detail})", "error")
        return redirect(_accounts_url())
    except RedisError:
        log.warning("could not store an OAuth flow", exc_info=True)
        flash("The service cannot start a sign-in right now; please try again in a moment.", "error")
        return redirect(_accounts_url())
    session[SESSION_KEY] = (session.get(SESSION_KEY) or [])[-(MAX_PENDING - 1):] + [flow.state]
    return redirect(url)


@bp.get("/oauth/<provider>/connect")
@roles_required(*ALL_ROLES)
def connect(provider: str):
    p = _provider_or_404(provider)
    if not p.configured:
        return _not_configured(p)
    _check_start_token(p.name, None)
    return _begin(p)


@bp.get("/oauth/<provider>/reconnect/<int:mailbox_id>")
@roles_required(*ALL_ROLES)
def reconnect(provider: str, mailbox_id: int):
    """Sign in again for a Problematic OAuth mailbox; the callback keeps the mailbox, its
    checkpoints and history, and refuses any other account."""
    p = _provider_or_404(provider)
    mailbox = db.session.get(Mailbox, mailbox_id) if mailbox_id <= MAX_ID else None
    # Only the owner: another user's mailbox is indistinguishable from a missing one.
    if mailbox is None or mailbox.user_id != current_user.id or mailbox.provider != p.name:
        abort(404, description="You have no such email account.")
    if mailbox.state != state.PROBLEMATIC:
        flash(f"{mailbox.address} is {mailbox.state}, not Problematic: there is nothing to reconnect.", "info")
        return redirect(_accounts_url())
    if not p.configured:
        return _not_configured(p)
    _check_start_token(p.name, mailbox_id)
    return _begin(p, mailbox)


@bp.get("/oauth/<provider>/callback")
@roles_required(*ALL_ROLES)
def callback(provider: str):
    p = _provider_or_404(provider)
    flow_state = request.args.get("state", "")
    pending = session.get(SESSION_KEY) or []
    try:
        flow = oauth_flow.take_flow(flow_state, p.name, current_user, in_session=flow_state in pending)
    except oauth_flow.FlowRefused as exc:
        abort(exc.status, description=str(exc))
    session[SESSION_KEY] = [s for s in pending if s != flow_state]

    if request.args.get("error"):
        classified = classify_oauth_error(request.args["error"], request.args.get("error_description"))
        return _refused(p, flow, classified.reason, classified.detail, _declined_words(p, classified))
    code = request.args.get("code")
    if not code:
        abort(400, description=f"{p.title} sent no authorization code back. Start connecting again.")
    try:
        auth = oauth_flow.complete_authorization(p, flow, code)
        mailbox, reconnected = linking.link_oauth_mailbox(current_user, auth, flow)
    except OAuthFailure as exc:
        db.session.rollback()
        words = exc.message + (f" {p.title} said: {exc.classified.detail}" if exc.classified.detail else "")
        return _refused(p, flow, exc.reason, exc.classified.detail, words, exc.missing_scopes)
    except linking.LinkError as exc:
        db.session.rollback()
        return _refused(p, flow, exc.code, exc.classified.detail if exc.classified else str(exc), str(exc))
    db.session.commit()
    announce_linked(mailbox, reconnected, current_user.id, via=p.title)
    return redirect(_accounts_url())


def _declined_words(p: Provider, classified) -> str:
    if classified.reason == state.CONSENT_MISSING:
        return (f"{p.title} did not give the CRM access: the permissions were declined or need an "
                f"administrator's approval. Ask IT to grant them. {p.title} said: {classified.detail}")
    return (f"{p.title} did not complete the sign-in. {plain_words(classified.reason)} "
            f"{p.title} said: {classified.detail}")


def _refused(p: Provider, flow: oauth_flow.Flow, reason: str, detail: str, words: str, missing: tuple = ()):
    """Nothing connected: the user is told why, and IT finds the refusal in the audit trail.
    A Problematic mailbox being reconnected keeps its state; a consent problem updates its reason."""
    mailbox = db.session.get(Mailbox, flow.mailbox_id) if flow.mailbox_id else None
    if mailbox is not None and reason == state.CONSENT_MISSING and mailbox.state == state.PROBLEMATIC:
        state.mark_problematic(mailbox, state.CONSENT_MISSING, detail, actor=current_user)
    record("mailbox_connect_refused", current_user, mailbox, provider=p.name, reason=reason, detail=detail,
           missing_scopes=list(missing) or None)
    db.session.commit()
    flash(("Not reconnected: " if flow.mailbox_id else "Not connected: ") + words, "error")
    return redirect(_accounts_url())
