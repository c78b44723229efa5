from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, IntegerField, SelectField, StringField
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange, ValidationError

from portal.addresses import normalise_address
from portal.models.users import ROLES
from portal.runtime_settings import KNOWN


def _bounds(key: str) -> NumberRange:
    _config, low, high = KNOWN[key]
    return NumberRange(low, high, message=f"Enter a whole number from {low} to {high}.")


_WHOLE = "Enter a whole number."


class UserForm(FlaskForm):
    """One user's name, role and permissions: one form, one save."""
    name = StringField("Name", validators=[Length(max=200)])
    role = SelectField("Role", choices=list(ROLES), validate_choice=True)
    can_see_activities = BooleanField("May see customers' Activities tab")
    can_see_emails = BooleanField("May read the emails themselves")


class NewUserForm(UserForm):
    email = EmailField("Email", validators=[DataRequired("Enter the user's email address."), Length(max=320)])

    def validate_email(self, field):
        try:
            field.data = normalise_address(field.data)
        except ValueError as exc:
            raise ValidationError(f"{str(exc)[:1].upper()}{str(exc)[1:].rstrip('.')}.") from None


class SettingsForm(FlaskForm):
    backfill_days = IntegerField(
        "Back-fill window (days)", validators=[InputRequired(_WHOLE), _bounds("backfill_days")],
        description="When a mailbox is first connected, emails up to this many days old are logged too. "
                    "Changing it affects mailboxes connected from now on.")
    interval_min_minutes = IntegerField(
        "Sync interval: shortest (minutes)", validators=[InputRequired(_WHOLE), _bounds("interval_min_minutes")],
        description="A busy mailbox, or one whose owner is using the CRM, is synced this often.")
    interval_max_minutes = IntegerField(
        "Sync interval: longest (minutes)", validators=[InputRequired(_WHOLE), _bounds("interval_max_minutes")],
        description="A quiet mailbox is synced at least this often.")
    problematic_after_failures = IntegerField(
        "Problematic after (failed syncs in a row)",
        validators=[InputRequired(_WHOLE), _bounds("problematic_after_failures")],
        description="Transient faults (server unreachable, TLS, protocol) are retried; after this many "
                    "failures in a row the mailbox turns Problematic. Refusals turn it Problematic at once.")

    def validate_interval_max_minutes(self, field):
        low = self.interval_min_minutes.data
        if isinstance(low, int) and isinstance(field.data, int) and field.data < low:
            raise ValidationError("The longest interval must not be shorter than the shortest one.")
