import re

from flask_wtf import FlaskForm
from wtforms import IntegerField, PasswordField, SelectField, StringField
from wtforms.validators import (
    DataRequired,
    InputRequired,
    Length,
    NumberRange,
    Optional,
    ValidationError,
)

from portal.accounts.linking import ImapSettings
from portal.addresses import normalise_address

_SECURITY = (("ssl", "SSL/TLS"), ("starttls", "STARTTLS"), ("none", "None (unencrypted)"))
try:  # WTForms 3.3 deprecates (value, label) tuples in favour of SelectChoice
    from wtforms import SelectChoice

    SECURITY_CHOICES = [SelectChoice(value, label) for value, label in _SECURITY]
except ImportError:  # pragma: no cover - older WTForms
    SECURITY_CHOICES = list(_SECURITY)
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$|^\[?[0-9A-Fa-f:.]+\]?$")


def _host(form, field):
    if field.data and not _HOST.match(field.data.strip()):
        raise ValidationError("Enter a server name such as imap.example.com (no http://, no spaces).")


class ServerForm(FlaskForm):
    """Login, password and server settings: what reconnecting asks for again."""
    login = StringField("Login", validators=[Optional(), Length(max=320)],
                        description="Usually the email address itself; leave empty to use it.")
    password = PasswordField("Password", validators=[DataRequired("Enter the mailbox's password."),
                                                     Length(max=1000)])
    imap_host = StringField("IMAP server", validators=[DataRequired("Enter the IMAP server's name."),
                                                       Length(max=255), _host])
    imap_port = IntegerField("IMAP port", default=993,
                             validators=[InputRequired("Enter a port number."),
                                         NumberRange(1, 65535, "A port is a number from 1 to 65535.")])
    imap_security = SelectField("IMAP security", choices=SECURITY_CHOICES, default="ssl")
    smtp_host = StringField("SMTP server", validators=[Optional(), Length(max=255), _host])
    smtp_port = IntegerField("SMTP port", default=465,
                             validators=[Optional(), NumberRange(1, 65535, "A port is a number from 1 to 65535.")])
    smtp_security = SelectField("SMTP security", choices=SECURITY_CHOICES, default="ssl")

    def settings_for(self, address: str) -> ImapSettings:
        smtp_host = (self.smtp_host.data or "").strip() or None
        return ImapSettings(
            address=address,
            login=(self.login.data or "").strip() or address,
            password=self.password.data,
            imap_host=self.imap_host.data.strip(),
            imap_port=self.imap_port.data,
            imap_security=self.imap_security.data,
            smtp_host=smtp_host,
            smtp_port=(self.smtp_port.data or 465) if smtp_host else None,
            smtp_security=self.smtp_security.data if smtp_host else None,
        )


class ConnectForm(ServerForm):
    address = StringField("Email address", validators=[DataRequired("Enter the email address."),
                                                       Length(max=320)])

    def validate_address(self, field):
        try:
            field.data = normalise_address(field.data)
        except ValueError as exc:
            message = str(exc)
            raise ValidationError(message[0].upper() + message[1:].rstrip(".") + ".") from None


class ReconnectForm(ServerForm):
    """The same settings, prefilled from the mailbox; only the password must be typed again."""
