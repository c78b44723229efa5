from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, PasswordField
from wtforms.validators import DataRequired, EqualTo, Length


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=320)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=500)])
    remember = BooleanField("Keep me signed in")


class ChoosePasswordForm(FlaskForm):
    password = PasswordField("New password", validators=[
        DataRequired("Choose a password."), Length(min=12, max=500, message="Use at least 12 characters.")])
    confirm = PasswordField("The same password again", validators=[
        DataRequired("Type the password again."), EqualTo("password", "The two passwords differ.")])
