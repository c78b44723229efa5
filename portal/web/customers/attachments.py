"""Attachments served for download: a name fit for the Content-Disposition header."""
from __future__ import annotations

import re
import unicodedata


def safe_filename(name: str | None, fallback: str = "attachment") -> str:
    """A name fit for Content-Disposition: no path, no control characters, no leading dots."""
    name = unicodedata.normalize("NFC", name or "")
    name = re.split(r"[/\\]", name)[-1]
    name = re.sub(r"[\x00-\x1f\x7f\"<>:|?*]+", "_", name).strip().lstrip(".").strip()
    return name[:200] or fallback
