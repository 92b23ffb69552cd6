"""What is waiting in Redis for the next flush, and what the last flushes did.

Read by `flask pulses stats` and at scrape time by `PendingWindowsCollector`, which
`ingestor.pulses.init_app` adds to the app's metrics. Cheap on purpose: the pending
sets name the window hashes (a few per hour), so nothing here scans the keyspace of
millions of dedupe keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
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
        return max(((now or datetime.now(UTC)) - oldest).total_seconds(), 0.0)


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


class PendingWindowsCollector:
    """Gauges read from Redis at scrape time: what waits for the next flush."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    def collect(self) -> Iterator[Any]:
        # Imported here: prometheus-client decides its multiprocess mode on first
        # import (see ingestor.observability.metrics).
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("ingestor_redis_up", "1 if Redis answered this scrape")
        try:
            pending = pending_windows(self._redis)
        except RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily(
            "ingestor_redis_windows_pending",
            "Live hour windows waiting for a flush",
            value=len(pending.windows),
        )
        yield GaugeMetricFamily(
            "ingestor_redis_snapshots_pending",
            "Snapshots taken but not persisted yet (a flush in progress, or one that failed)",
            value=len(pending.snapshots),
        )
        yield GaugeMetricFamily(
            "ingestor_redis_oldest_pending_window_age_seconds",
            "Seconds since the start of the oldest hour still waiting in Redis (0: none)",
            value=pending.oldest_age_seconds(),
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
