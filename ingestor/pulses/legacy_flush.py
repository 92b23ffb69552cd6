"""Draining the previous Redis layout (v1) during the migration to layout v2.

v1 kept one hash per hour, `ingestor:window:<h>`, renamed for a flush to
`ingestor:snapshot:<h>:<β>`, and named the pending ones in the sets `ingestor:windows`
and `ingestor:snapshots`. Workers of this version no longer write them, but workers
of the previous release may still run during a rolling deploy. Each flush drains them
first, with v1's own steps: the leftover snapshots, then every window renamed to a
fresh snapshot (the Persister persists each one in its own transaction, guarded by
its batch id in `flush_batch`, then deletes it). Kept for one release.
"""

from __future__ import annotations

from collections.abc import Iterator

from redis import Redis

from ingestor.pulses import keys
from ingestor.redis_store import text_of

# KEYS: live window, snapshot, pending-windows set, pending-snapshots set.
# Returns 1 when the window was renamed, 0 when it no longer exists.
LEGACY_SNAPSHOT_SCRIPT = """
redis.call('SREM', KEYS[3], KEYS[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('RENAMENX', KEYS[1], KEYS[2]) == 0 then
  return redis.error_reply('snapshot key already exists: ' .. KEYS[2])
end
redis.call('SADD', KEYS[4], KEYS[2])
return 1
"""


def legacy_keys_exist(redis: Redis) -> bool:
    """Whether v1 windows or snapshots still wait for a flush."""
    return bool(redis.exists(keys.LEGACY_PENDING_WINDOWS, keys.LEGACY_PENDING_SNAPSHOTS))


class LegacyDrain:
    """The v1 snapshots to persist, and their bookkeeping once persisted."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._snapshot = redis.register_script(LEGACY_SNAPSHOT_SCRIPT)

    def snapshots(self) -> Iterator[str]:
        """The v1 snapshots a crashed run left, then each v1 window renamed to one."""
        yield from sorted(self._members(keys.LEGACY_PENDING_SNAPSHOTS))
        for window in sorted(self._members(keys.LEGACY_PENDING_WINDOWS)):
            snapshot, _ = keys.legacy_new_snapshot_key(window)
            script_keys = [window, snapshot, keys.LEGACY_PENDING_WINDOWS, keys.LEGACY_PENDING_SNAPSHOTS]
            if self._snapshot(keys=script_keys):  # 0: another run took this window first
                yield snapshot

    def forget(self, snapshot: str) -> None:
        """Delete a persisted v1 snapshot and its name."""
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.unlink(snapshot)  # freed in the background: a big hash would block Redis
            pipe.srem(keys.LEGACY_PENDING_SNAPSHOTS, snapshot)
            pipe.execute()

    def set_aside(self, snapshot: str) -> None:
        """Move a corrupt v1 snapshot's name to the corrupt set, untouched."""
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.srem(keys.LEGACY_PENDING_SNAPSHOTS, snapshot)
            pipe.sadd(keys.CORRUPT_SNAPSHOTS, snapshot)
            pipe.execute()

    def _members(self, set_key: str) -> list[str]:
        return [text_of(member) for member in self._redis.smembers(set_key)]
