"""How values read on every page: times in the viewer's own time zone, in one format.

Stored times are naive UTC. A page shows them in the signed-in user's time zone (their own
choice on Your settings, else the organisation's, EIS_TIME_ZONE), as "2026-11-19 20:34 CET"
or "5 min ago" with the exact time on hover. The API and the CSV export keep UTC.
Registered once, by portal.web.init_app.
"""
from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from flask import Flask, current_app, url_for
from flask_login import current_user
from jinja2.utils import urlize
from markupsafe import Markup

from portal.mail.errors import ACCOUNTS_PAGE, detail_words
from portal.timeutil import utcnow

TIME_FORMAT = "%Y-%m-%d %H:%M %Z"
# One name for each thing, on every page (the API and the CSV keep the codes).
TRIGGER_WORDS = {"scheduled": "Scheduled", "manual": "Sync now", "adhoc": "Customer page opened",
                 "backfill": "First sync", "resync": "Resync by an admin"}
RUN_WORDS = {"succeeded": "Succeeded", "failed": "Failed", "running": "Running"}
UTC = ZoneInfo("UTC")


@lru_cache(maxsize=1)
def time_zone_names() -> tuple[str, ...]:
    """The IANA time zones a user may choose, sorted."""
    return tuple(sorted(name for name in available_timezones() if "/" in name or name == "UTC"))


def zone_named(name: str | None) -> ZoneInfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def organisation_zone() -> ZoneInfo:
    return zone_named(current_app.config.get("EIS_TIME_ZONE")) or UTC


def viewer_zone() -> ZoneInfo:
    """The signed-in user's time zone, else the organisation's."""
    own = zone_named(getattr(current_user, "time_zone", None)) if current_user and current_user.is_authenticated \
        else None
    return own or organisation_zone()


def exact_time(value: datetime | None, zone: ZoneInfo | None = None) -> str:
    """'2026-11-19 20:34 CET' in the viewer's zone ('' for no time)."""
    if value is None:
        return ""
    moment = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value
    return moment.astimezone(zone or viewer_zone()).strftime(TIME_FORMAT)


def relative_time(value: datetime | None, now: datetime | None = None, zone: ZoneInfo | None = None) -> str:
    """'just now', '5 min ago', 'in 12 min', '3 h ago', '4 days ago', else the local date."""
    if value is None:
        return ""
    now = now or utcnow()
    seconds = (now - value).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 45:
        return "in a moment" if future else "just now"
    if seconds < 90 * 60:
        amount = f"{max(1, round(seconds / 60))} min"
    elif seconds < 36 * 3600:
        amount = f"{round(seconds / 3600)} h"
    elif seconds < 30 * 86400:
        amount = f"{round(seconds / 86400)} days"
    else:
        local = value.replace(tzinfo=timezone.utc).astimezone(zone or viewer_zone())
        return f"{local.day} {local:%b %Y}"
    return f"in {amount}" if future else f"{amount} ago"


def ago(value: datetime | None) -> str:
    """relative_time for tables: a dash where there is no time."""
    return relative_time(value) if value is not None else "—"


def iso_utc(value: datetime | None) -> str:
    """For <time datetime=...>: machines read UTC."""
    return "" if value is None else value.replace(microsecond=0).isoformat() + "Z"


def duration(seconds: float | None) -> str:
    """'850 ms', '12 s', '3 min', '2 h 5 min', '3 d'."""
    if seconds is None:
        return "—"
    seconds = abs(seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms" if seconds else "0 s"
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min"
    if seconds < 86400 * 2:
        return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"
    return f"{seconds // 86400:.0f} d"


def step_html(step: str) -> Markup:
    """A fix step for the page: its web and email addresses as links, and the name of the
    page where reps reconnect as a link to it."""
    html = urlize(step, rel="noopener noreferrer", target="_blank")
    page = f'<a href="{url_for("mailboxes.mine")}">{ACCOUNTS_PAGE}</a>'
    return Markup(html.replace(ACCOUNTS_PAGE, page, 1))


def init_app(app: Flask) -> None:
    for name, function in (("exact_time", exact_time), ("relative_time", relative_time), ("ago", ago),
                           ("iso_utc", iso_utc), ("duration", duration), ("step_html", step_html)):
        app.add_template_filter(function, name)
    app.add_template_global(viewer_zone, "viewer_zone")
    app.add_template_global(detail_words, "detail_words")
    app.add_template_global(TRIGGER_WORDS, "trigger_words")
    app.add_template_global(RUN_WORDS, "run_words")
