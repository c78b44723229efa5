"""When each mailbox syncs next: every 10-30 minutes (settings), busier mailboxes and
active owners nearer the minimum, quiet ones nearer the maximum, with jitter so that
thousands of mailboxes connected at once do not fire together. Pure: no I/O.

Nothing here waits longer than the longest interval (the admin's "synced at least this
often"): not a transient fault's back-off, not the lease of a queued job. That is what lets
the fleet promise that every mailbox is synced again within twice the longest interval
after an outage ends (README "When something is down")."""
import random
from datetime import datetime, timedelta

BACKOFF_CAP_SECONDS = 3600
QUEUED_LEASE = timedelta(minutes=5)


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


def backoff_delay(failures: int, *, base_seconds: float = 60, cap_seconds: float = BACKOFF_CAP_SECONDS,
                  longest: timedelta | None = None, retry_after: float | None = None,
                  rng: random.Random | None = None) -> timedelta:
    """Exponential back-off with full jitter for transient faults, never longer than the
    longest sync interval (`longest`) nor `cap_seconds`; a provider's own 'retry after' wins
    when it asks for longer (hammering a throttled server only lengthens the penalty)."""
    rng = rng or random
    if longest is not None:
        cap_seconds = min(cap_seconds, longest.total_seconds())
    ceiling = min(cap_seconds, base_seconds * (2 ** max(failures - 1, 0)))
    seconds = rng.uniform(ceiling / 2, ceiling)
    if retry_after:
        seconds = max(seconds, retry_after)
    return timedelta(seconds=seconds)


def queued_lease(longest: timedelta) -> timedelta:
    """How long the scheduler leaves a mailbox alone after queueing its sync (the run sets
    the real next time when it ends). At most the longest interval: if the queue is lost
    (Redis restarted without its data) or the job dies before its run ends (the database
    away), the mailbox is due again within that, not after a fixed five minutes."""
    return min(QUEUED_LEASE, longest)


def is_due(next_sync_at: datetime | None, now: datetime) -> bool:
    return next_sync_at is None or next_sync_at <= now
