"""Email HTML made safe to show: ordinary formatting only, nothing that runs or phones home.

Defence in depth: this cleaner removes scripts, styles, event handlers, forms, frames and
dangerous URLs; the page that serves the result adds a CSP that allows no script and no
remote content, and the iframe showing it is sandboxed. Remote images are dropped because
they are how senders track when (and where) an email was opened.
"""
from __future__ import annotations

import re

import nh3

ALLOWED_TAGS = {
    "a", "abbr", "address", "b", "bdi", "bdo", "big", "blockquote", "br", "caption", "center", "cite",
    "code", "col", "colgroup", "dd", "del", "dfn", "div", "dl", "dt", "em", "font", "h1", "h2", "h3",
    "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "samp",
    "small", "span", "strike", "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th", "thead",
    "time", "tr", "tt", "u", "ul", "var", "wbr",
}
# Dropped with everything inside them, not just the tag.
CONTENT_DROPPED = {"script", "style", "title", "head", "noscript", "template", "iframe", "object",
                   "embed", "svg", "math", "textarea", "select", "button"}
TABLE_ATTRS = {"align", "valign", "width", "height", "bgcolor", "colspan", "rowspan", "border",
               "cellpadding", "cellspacing"}
ALLOWED_ATTRIBUTES = {
    "*": {"title", "dir", "lang", "align", "style"},
    "a": {"href", "name"},
    "img": {"src", "alt", "width", "height", "border"},
    "font": {"color", "face", "size"},
    "table": TABLE_ATTRS, "td": TABLE_ATTRS, "th": TABLE_ATTRS, "tr": TABLE_ATTRS,
    "col": TABLE_ATTRS, "colgroup": TABLE_ATTRS, "tbody": TABLE_ATTRS, "thead": TABLE_ATTRS,
    "tfoot": TABLE_ATTRS,
    "ol": {"start", "type"}, "li": {"value"}, "blockquote": {"cite"}, "q": {"cite"},
    "time": {"datetime"}, "hr": {"width", "size", "noshade"},
}
# Layout and typography only: no url(), no position tricks, no behaviour.
ALLOWED_STYLE_PROPERTIES = {
    "color", "background-color", "font", "font-family", "font-size", "font-style", "font-weight",
    "font-variant", "line-height", "letter-spacing", "text-align", "text-decoration", "text-indent",
    "text-transform", "white-space", "word-break", "word-wrap", "vertical-align", "direction",
    "margin", "margin-top", "margin-right", "margin-bottom", "margin-left",
    "padding", "padding-top", "padding-right", "padding-bottom", "padding-left",
    "border", "border-top", "border-right", "border-bottom", "border-left", "border-color",
    "border-style", "border-width", "border-collapse", "border-spacing", "border-radius",
    "width", "max-width", "min-width", "height", "max-height", "min-height", "display",
    "list-style-type",
}
URL_SCHEMES = {"http", "https", "mailto", "tel", "data"}
_SAFE_LINK = re.compile(r"^(?:https?:|mailto:|tel:|#)", re.IGNORECASE)
_INLINE_IMAGE = re.compile(r"^data:image/(?:png|gif|jpe?g|webp|bmp);base64,[A-Za-z0-9+/=\s]*$", re.IGNORECASE)
_REMOTE_IMAGE = re.compile(r"<img\b[^>]*\bsrc\s*=\s*[\"']?\s*(?:https?:)?//", re.IGNORECASE)


def _filter_attribute(tag: str, name: str, value: str) -> str | None:
    if name == "href":
        # Only web, mail and phone links; javascript:, data:, vbscript: and relative paths go.
        return value if _SAFE_LINK.match(value.strip()) else None
    if name == "src":
        # Remote images (tracking pixels) and cid: references go; inline raster images stay.
        return value if tag == "img" and _INLINE_IMAGE.match(value.strip()) else None
    if name == "style" and re.search(r"url\s*\(|expression\s*\(|@import", value, re.IGNORECASE):
        return None
    return value


_CLEANER = nh3.Cleaner(
    tags=ALLOWED_TAGS,
    clean_content_tags=CONTENT_DROPPED,
    attributes=ALLOWED_ATTRIBUTES,
    attribute_filter=_filter_attribute,
    strip_comments=True,
    link_rel="noopener noreferrer",
    url_schemes=URL_SCHEMES,
    url_relative="deny",
    filter_style_properties=ALLOWED_STYLE_PROPERTIES,
)


def clean_email_html(html: str | None) -> str:
    """The email's HTML body with only safe formatting left."""
    if not html:
        return ""
    return _CLEANER.clean(html)


def has_remote_images(html: str | None) -> bool:
    """True when the original HTML wanted to load images from the internet (blocked here)."""
    return bool(html) and bool(_REMOTE_IMAGE.search(html))


DOCUMENT = """<!doctype html>
<html><head><meta charset="utf-8"><meta name="referrer" content="no-referrer">
<style>
body {{ margin: 0; padding: 16px 20px; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #1c2330; background: #fff; overflow-wrap: anywhere; }}
img {{ max-width: 100%; height: auto; }}
img:not([src]) {{ display: inline-block; min-width: 1em; min-height: 1em; background: #eceff3; }}
img:not([src])[width="0"], img:not([src])[width="1"],
img:not([src])[height="0"], img:not([src])[height="1"] {{ display: none; }}
blockquote {{ margin: .5em 0 .5em .5em; padding-left: .8em; border-left: 3px solid #dde2ea; color: #5d6778; }}
table {{ max-width: 100%; }}
pre {{ white-space: pre-wrap; }}
</style></head>
<body>{body}</body></html>
"""


def email_document(html: str | None) -> str:
    """A whole page around the cleaned HTML, for the sandboxed iframe."""
    return DOCUMENT.format(body=clean_email_html(html))
