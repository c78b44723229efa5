"""Admin -> Webhooks: the endpoints (add, edit, enable or disable, a new secret, remove) and each
endpoint's delivery log: every event's attempts with status, time and the answer's first
lines, and Redeliver. The secret is shown once, on the page that made it, and never again."""
from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload
from wtforms import BooleanField, SelectMultipleField, StringField
from wtforms.validators import Length, ValidationError

from portal.extensions import db
from portal.models.webhooks import ENVIRONMENT, EVENT_TYPES, PENDING, WebhookDelivery, WebhookEndpoint
from portal.webhooks import endpoints as service
from portal.webhooks.delivery import redeliver
from portal.web.admin.views import bp
from portal.web.kit import Page, arg, get_or_404, page_number
from portal.web.roles import roles_required

DELIVERIES_PER_PAGE = 30
STATES = ("pending", "delivered", "failed")
TYPE_WORDS = {
    "activity.logged": "activity.logged: an email was logged on a customer",
    "outgoing.sent": "outgoing.sent: an email sent from the CRM went out",
    "outgoing.failed": "outgoing.failed: an email sent from the CRM failed, with the reason",
    "mailbox.state_changed": "mailbox.state_changed: a mailbox changed state (e.g. turned Problematic)",
}


class EndpointForm(FlaskForm):
    url = StringField("Receiver URL", validators=[Length(max=2000)],
                      description="Where the events are POSTed. https:// is required, except for hosts "
                                  "the deployment allows with EIS_MAIL_HOSTS_ALLOW.")
    description = StringField("Description", validators=[Length(max=200)], description="For you: what receives it.")
    event_types = SelectMultipleField("Events", choices=list(EVENT_TYPES),
                                      validate_choice=False)
    enabled = BooleanField("Enabled: send events to this endpoint")

    def validate_url(self, field):
        try:
            field.data = service.checked_url(field.data)
        except service.UrlRefused as exc:
            raise ValidationError(str(exc)) from None

    def validate_event_types(self, field):
        try:
            field.data = service.checked_types(field.data)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


@bp.get("/webhooks")
@roles_required()
def webhooks():
    rows = db.session.scalars(select(WebhookEndpoint).order_by(WebhookEndpoint.id)).all()
    return render_template("admin/webhooks.html", endpoints=rows,
                           counts=service.delivery_counts([e.id for e in rows]))


@bp.route("/webhooks/new", methods=["GET", "POST"])
@roles_required()
def new_webhook():
    form = EndpointForm(data={"event_types": list(EVENT_TYPES), "enabled": True}) \
        if request.method == "GET" else EndpointForm()
    if form.validate_on_submit():
        endpoint, secret = service.add(form.url.data, form.event_types.data, form.description.data, current_user)
        db.session.commit()
        # The secret is shown on this answer only: not kept in the session, not cached.
        response = render_template("admin/webhook_secret.html", endpoint=endpoint, secret=secret, added=True)
        return response, 201, {"Cache-Control": "no-store"}
    return render_template("admin/webhook_form.html", form=form, endpoint=None, type_words=TYPE_WORDS), \
        400 if request.method == "POST" else 200


@bp.route("/webhooks/<int:endpoint_id>/edit", methods=["GET", "POST"])
@roles_required()
def edit_webhook(endpoint_id: int):
    endpoint = get_or_404(WebhookEndpoint, endpoint_id)
    if endpoint.source == ENVIRONMENT:
        flash("This endpoint comes from EIS_WEBHOOK_URL and EIS_WEBHOOK_SECRET: change them in the "
              "environment. It can be disabled here.", "error")
        return redirect(url_for(".webhook", endpoint_id=endpoint.id))
    form = EndpointForm(obj=endpoint) if request.method == "GET" else EndpointForm()
    if form.validate_on_submit():
        service.change(endpoint, url=form.url.data, event_types=form.event_types.data,
                       description=form.description.data, enabled=form.enabled.data, actor=current_user)
        db.session.commit()
        flash("Webhook endpoint saved.", "success")
        return redirect(url_for(".webhook", endpoint_id=endpoint.id))
    return render_template("admin/webhook_form.html", form=form, endpoint=endpoint, type_words=TYPE_WORDS), \
        400 if request.method == "POST" else 200


@bp.post("/webhooks/<int:endpoint_id>/enabled")
@roles_required()
def enable_webhook(endpoint_id: int):
    endpoint = get_or_404(WebhookEndpoint, endpoint_id)
    enabled = request.form.get("enabled") == "yes"
    service.set_enabled(endpoint, enabled, current_user)
    db.session.commit()
    flash(f"{endpoint.url} is {'enabled: events are sent to it' if enabled else 'disabled: no new events are sent to it'}.",
          "success")
    return redirect(url_for(".webhook", endpoint_id=endpoint.id))


@bp.post("/webhooks/<int:endpoint_id>/secret")
@roles_required()
def webhook_secret(endpoint_id: int):
    endpoint = get_or_404(WebhookEndpoint, endpoint_id)
    if endpoint.source == ENVIRONMENT:
        flash("This endpoint's secret is the deployment's EIS_WEBHOOK_SECRET: change it there.", "error")
        return redirect(url_for(".webhook", endpoint_id=endpoint.id))
    secret = service.new_secret_for(endpoint, current_user)
    db.session.commit()
    return render_template("admin/webhook_secret.html", endpoint=endpoint, secret=secret, added=False), \
        200, {"Cache-Control": "no-store"}


@bp.route("/webhooks/<int:endpoint_id>/delete", methods=["GET", "POST"])
@roles_required()
def delete_webhook(endpoint_id: int):
    endpoint = get_or_404(WebhookEndpoint, endpoint_id)
    if endpoint.source == ENVIRONMENT:
        flash("This endpoint comes from EIS_WEBHOOK_URL: remove it from the environment, or disable it here.", "error")
        return redirect(url_for(".webhook", endpoint_id=endpoint.id))
    if request.method == "POST":
        url = endpoint.url
        service.remove(endpoint, current_user)
        db.session.commit()
        flash(f"{url} is removed, with its delivery log.", "success")
        return redirect(url_for(".webhooks"))
    pending = db.session.scalar(select(func.count(WebhookDelivery.id)).where(
        WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.state == PENDING)) or 0
    return render_template("admin/webhook_delete.html", endpoint=endpoint, pending=pending)


@bp.get("/webhooks/<int:endpoint_id>")
@roles_required()
def webhook(endpoint_id: int):
    """The endpoint and its delivery log, newest event first, filtered by state."""
    endpoint = get_or_404(WebhookEndpoint, endpoint_id)
    state = arg("state", STATES)
    where = [WebhookDelivery.endpoint_id == endpoint.id] + ([WebhookDelivery.state == state] if state else [])
    total = db.session.scalar(select(func.count(WebhookDelivery.id)).where(*where)) or 0
    page = max(1, min(page_number(), -(-total // DELIVERIES_PER_PAGE) or 1))
    rows = db.session.scalars(
        select(WebhookDelivery).where(*where).options(selectinload(WebhookDelivery.event),
                                                      selectinload(WebhookDelivery.attempt_log))
        .order_by(WebhookDelivery.event_seq.desc()).limit(DELIVERIES_PER_PAGE)
        .offset((page - 1) * DELIVERIES_PER_PAGE)).all()
    return render_template("admin/webhook.html", endpoint=endpoint, state=state, states=STATES,
                           page=Page(rows, page, DELIVERIES_PER_PAGE, total),
                           counts=service.delivery_counts([endpoint.id])[endpoint.id])


@bp.post("/webhooks/deliveries/<int:delivery_id>/redeliver")
@roles_required()
def redeliver_webhook(delivery_id: int):
    delivery = get_or_404(WebhookDelivery, delivery_id)
    if not delivery.endpoint.enabled:
        flash("The endpoint is disabled: enable it first, then redeliver.", "error")
        return redirect(url_for(".webhook", endpoint_id=delivery.endpoint_id))
    redeliver(delivery, current_user)
    db.session.commit()
    flash(f"Event {delivery.event.id} is queued to be delivered again, with the same id.", "success")
    return redirect(url_for(".webhook", endpoint_id=delivery.endpoint_id, _anchor=f"delivery-{delivery.id}"))
