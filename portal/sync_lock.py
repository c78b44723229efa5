"""One sync of a mailbox at a time: a lock in Redis, per mailbox.

The lock is taken with a claim before anything is read from the mail server. A run that
is worth keeping (see portal/run_history.py) stores its SyncRun and the lock then names
the run's id, so the scheduler can release the lock of a run whose worker died
(recover_stale_runs). A quiet poll never stores a run: its claim simply expires with the
lock's TTL if its worker is killed in the milliseconds it holds it.
"""
from __future__ import annotations

import uuid

from portal.models import SyncRun
from portal.queue import get_redis

LOCK_TTL_SECONDS = 120

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) end
return 0
"""
_RENAME = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('set', KEYS[1], ARGV[2], 'KEEPTTL') end
return 0
"""


class AlreadyRunning(Exception):
    pass


def lock_key(mailbox_id: int) -> str:
    return f"eis:lock:mailbox:{mailbox_id}"


def release_lock_of_run(run: SyncRun) -> None:
    get_redis().eval(_RELEASE, 1, lock_key(run.mailbox_id), str(run.id))


def extend_lock(mailbox_id: int, holder: str) -> None:
    get_redis().eval(_EXTEND, 1, lock_key(mailbox_id), holder, LOCK_TTL_SECONDS)


class MailboxLock:
    """acquire() or AlreadyRunning; name_run() once the run is stored; release() at the end."""

    def __init__(self, mailbox_id: int):
        self.mailbox_id = mailbox_id
        self.key = lock_key(mailbox_id)
        self.holder = "claim-" + uuid.uuid4().hex

    def acquire(self) -> MailboxLock:
        if not get_redis().set(self.key, self.holder, nx=True, ex=LOCK_TTL_SECONDS):
            raise AlreadyRunning(f"mailbox {self.mailbox_id} is being synced by another worker")
        return self

    def name_run(self, run: SyncRun) -> None:
        """From now on the lock names the stored run (the scheduler's recovery needs that)."""
        get_redis().eval(_RENAME, 1, self.key, self.holder, str(run.id))
        self.holder = str(run.id)

    def extend(self) -> None:
        extend_lock(self.mailbox_id, self.holder)

    def release(self) -> None:
        get_redis().eval(_RELEASE, 1, self.key, self.holder)
