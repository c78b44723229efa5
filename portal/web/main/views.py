from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import BooleanField, SelectField

from portal.extensions import db
from portal.notify import config as notify_config
from portal.timeutil import utcnow
from portal.web.filters import exact_time, organisation_zone, time_zone_names, viewer_zone
from portal.web.roles import ALL_ROLES, roles_required

bp = Blueprint("main", __name__)


class AccountForm(FlaskForm):
    time_zone = SelectField("Time zone", validate_choice=True,
                            description="Times on every page are shown in this zone. The API and the CSV "
                                        "export always use UTC.")
    email_notifications = BooleanField("Email me when one of my email accounts stops syncing")


@bp.route("/")
@roles_required(*ALL_ROLES)
def index():
    return render_template("main/index.html", user=current_user)


@bp.route("/settings", methods=["GET", "POST"])
@roles_required(*ALL_ROLES)
def account():
    """Your settings: the time zone the portal shows times in; email notifications on or off."""
    form = AccountForm(obj=current_user) if request.method == "GET" else AccountForm()
    form.time_zone.choices = [("", f"The organisation's ({organisation_zone().key})")] + \
        [(name, name.replace("_", " ")) for name in time_zone_names()]
    if form.validate_on_submit():
        chosen = form.time_zone.data or None
        if chosen != current_user.time_zone or form.email_notifications.data != current_user.email_notifications:
            current_user.time_zone = chosen
            current_user.email_notifications = form.email_notifications.data
            db.session.commit()
        told = "you get email notifications" if current_user.email_notifications else "email notifications are off"
        flash(f"Saved. Times are shown in {viewer_zone().key}: now it is {exact_time(utcnow())}; {told}.", "success")
        return redirect(url_for(".account"))
    status = 400 if request.method == "POST" else 200
    return render_template("main/account.html", form=form, now=utcnow(),
                           notify_on=notify_config.enabled(), it_digest=current_user.role == "it"), status
