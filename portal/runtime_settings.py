"""Settings an admin changes at run time (Setting rows), falling back to the app config."""
from flask import current_app

from portal.extensions import db
from portal.models import Setting

# setting key -> (config default key, lowest, highest)
KNOWN = {
    "backfill_days": ("EIS_BACKFILL_DAYS", 0, 365),
    "interval_min_minutes": ("EIS_SYNC_INTERVAL_MIN_MINUTES", 1, 24 * 60),
    "interval_max_minutes": ("EIS_SYNC_INTERVAL_MAX_MINUTES", 1, 24 * 60),
    "problematic_after_failures": ("EIS_PROBLEMATIC_AFTER_FAILURES", 1, 1000),
}


def get(key: str) -> int:
    config_key, _low, _high = KNOWN[key]
    row = db.session.get(Setting, key)
    return int(row.value) if row is not None and row.value is not None else int(current_app.config[config_key])


def set_value(key: str, value: int) -> None:
    """Validated; the caller commits (with its audit event)."""
    _config_key, low, high = KNOWN[key]
    if not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key} must be a whole number from {low} to {high}")
    row = db.session.get(Setting, key) or Setting(key=key)
    row.value = value
    db.session.add(row)
