"""Settings an admin changes at run time (Setting rows), falling back to the app config."""
from datetime import timedelta

from flask import current_app

from portal.extensions import db
from portal.models import Setting

# setting key -> (config default key, lowest, highest): the limits of the admin's page.
KNOWN = {
    "backfill_days": ("EIS_BACKFILL_DAYS", 0, 365),
    "interval_min_minutes": ("EIS_SYNC_INTERVAL_MIN_MINUTES", 1, 24 * 60),
    "interval_max_minutes": ("EIS_SYNC_INTERVAL_MAX_MINUTES", 1, 24 * 60),
    "problematic_after_failures": ("EIS_PROBLEMATIC_AFTER_FAILURES", 1, 1000),
}
# The intervals may be fractions of a minute where they come from the configuration (tests
# and demos sync every few seconds: EIS_SYNC_INTERVAL_MAX_MINUTES=0.2); never below a second.
FRACTIONAL = {"interval_min_minutes", "interval_max_minutes"}
SHORTEST_INTERVAL_MINUTES = 1 / 60


def get(key: str) -> int | float:
    config_key, _low, _high = KNOWN[key]
    row = db.session.get(Setting, key)
    value = row.value if row is not None and row.value is not None else current_app.config[config_key]
    return _number(key, value)


def default(key: str) -> int | float:
    """The deployment's value (configuration or environment), before any admin's change."""
    return _number(key, current_app.config[KNOWN[key][0]])


def longest_interval() -> timedelta:
    """The longest time between two syncs of a mailbox: the bound for back-offs and leases."""
    return timedelta(minutes=max(get("interval_min_minutes"), get("interval_max_minutes")))


def set_value(key: str, value: int) -> None:
    """Validated; the caller commits (with its audit event)."""
    _config_key, low, high = KNOWN[key]
    if not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key} must be a whole number from {low} to {high}")
    row = db.session.get(Setting, key) or Setting(key=key)
    row.value = value
    db.session.add(row)


def _number(key: str, value) -> int | float:
    if key not in FRACTIONAL:
        return int(value)
    number = max(float(value), SHORTEST_INTERVAL_MINUTES)
    return int(number) if number.is_integer() else number
