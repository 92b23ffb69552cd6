"""What is waiting in Redis for the next flush, and what the last flushes did.

Read by `flask pulses stats` and by the metrics collector at scrape time. Cheap on
purpose: the pending sets name the window hashes (a few per hour), so nothing here
scans the keyspace of millions of dedupe keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from redis import Redis
from sqlalchemy import func, select

from ingestor.database import Database
from ingestor.pulses import keys
from ingestor.pulses.models import FlushBatch, RejectedPulse


@dataclass(frozen=True)
class PendingWindows:
    """The hour windows and snapshots not persisted yet."""

    windows: list[str]
    snapshots: list[str]

    @property
    def oldest_hour(self) -> datetime | None:
        """The start of the oldest pending hour (live or snapshotted), None if nothing waits."""
        hours = [keys.window_start_of_key(key) for key in (*self.windows, *self.snapshots)]
        return min(hours, default=None)

    def oldest_age_seconds(self, now: datetime | None = None) -> float:
        """Seconds since the oldest pending hour began; 0 when nothing waits."""
        oldest = self.oldest_hour
        if oldest is None:
            return 0.0
        return max(((now or datetime.now(timezone.utc)) - oldest).total_seconds(), 0.0)


def pending_windows(redis: Redis) -> PendingWindows:
    """The pending window and snapshot keys, from the two bookkeeping sets."""
    with redis.pipeline(transaction=False) as pipe:
        pipe.smembers(keys.PENDING_WINDOWS)
        pipe.smembers(keys.PENDING_SNAPSHOTS)
        windows, snapshots = pipe.execute()
    return PendingWindows(
        windows=sorted(member.decode() for member in windows),
        snapshots=sorted(member.decode() for member in snapshots),
    )


def pending_groups(redis: Redis, hash_keys: list[str]) -> int:
    """(tenant, sku, unit, hour) groups held in these window/snapshot hashes.

    One `n|` count field per group (amounts may spill over several fields), counted
    with HSCAN so a huge hash never blocks Redis; meant for an operator's command.
    """
    pattern = keys.COUNT_FIELD_PREFIX + b"*"
    return sum(1 for key in hash_keys for _ in redis.hscan_iter(key, match=pattern, count=1000))


@dataclass(frozen=True)
class PersistedStats:
    """What PostgreSQL says about past flushes and rejections."""

    last_flush_at: datetime | None
    flush_batches: int
    rejected_pulses: int


def persisted_stats(database: Database) -> PersistedStats:
    """The last flush batch's time, the number of flush batches and of rejected pulses."""
    with database.session() as session:
        last_flush_at, flush_batches = session.execute(
            select(func.max(FlushBatch.persisted_at), func.count()).select_from(FlushBatch)
        ).one()
        rejected = session.scalar(select(func.count()).select_from(RejectedPulse))
    return PersistedStats(last_flush_at, flush_batches, rejected or 0)
