"""One helper decides page or fragment (STYLE.md): htmx requests that are not boosted get
the fragment, everything else the whole page; responses vary on HX-Request."""
from flask import make_response, render_template

from portal.extensions import htmx


def page_or_fragment(page: str, fragment: str, status: int = 200, **context):
    wants_fragment = bool(htmx) and not htmx.boosted
    response = make_response(render_template(fragment if wants_fragment else page, **context), status)
    response.headers["Vary"] = "HX-Request"
    return response
