from flask import render_template
from flask_login import current_user

from portal.web.main import bp
from portal.web.roles import ALL_ROLES, roles_required


@bp.route("/")
@roles_required(*ALL_ROLES)
def index():
    return render_template("main/index.html", user=current_user)
