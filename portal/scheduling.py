"""When each mailbox syncs next: every 10-30 minutes (settings), busier mailboxes and
active owners nearer the minimum, quiet ones nearer the maximum, with jitter so that
thousands of mailboxes connected at once do not fire together. Pure: no I/O."""
import random
from datetime import datetime, timedelta


def next_interval(*, min_minutes: float, max_minutes: float, recent_messages: int,
                  owner_active: bool, rng: random.Random | None = None) -> timedelta:
    """recent_messages: messages seen in the last day's runs; owner_active: used the portal lately."""
    rng = rng or random
    low, high = sorted((float(min_minutes), float(max_minutes)))
    # Busyness in [0, 1]: 0 quiet, 1 busy (20+ new messages a day saturates it).
    busy = min(recent_messages / 20.0, 1.0)
    if owner_active:
        busy = max(busy, 0.75)
    centre = high - (high - low) * busy
    # +/-15% of the range as jitter, kept inside [low, high].
    spread = (high - low) * 0.15
    minutes = min(high, max(low, centre + rng.uniform(-spread, spread)))
    return timedelta(minutes=minutes)


def backoff_delay(failures: int, *, base_seconds: float = 60, cap_seconds: float = 3600,
                  retry_after: float | None = None, rng: random.Random | None = None) -> timedelta:
    """Exponential back-off with full jitter for transient faults; a provider's own
    'retry after' wins when it asks for longer."""
    rng = rng or random
    ceiling = min(cap_seconds, base_seconds * (2 ** max(failures - 1, 0)))
    seconds = rng.uniform(ceiling / 2, ceiling)
    if retry_after:
        seconds = max(seconds, retry_after)
    return timedelta(seconds=seconds)


def is_due(next_sync_at: datetime | None, now: datetime) -> bool:
    return next_sync_at is None or next_sync_at <= now
