"""What is waiting in Redis for the next flush, and what the last flushes did.

Read by `flask pulses stats` and at scrape time by `PendingWindowsCollector`, which
`ingestor.pulses.init_app` adds to the app's metrics. Cheap on purpose: each tag's
registry names its live hours and snapshot batches (a few per hour), so nothing here
scans the keyspace of millions of dedupe keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
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
    """The hour windows and snapshots not persisted yet, from the tags' registries."""

    # (tag, hour) with live buckets; batches renamed but not committed, as (tag, entry).
    windows: list[tuple[str, int]]
    snapshots: list[tuple[str, keys.SnapshotEntry]]
    # Committed batches still readable (their grace), and corrupt ones set aside.
    in_grace: int = 0
    corrupt: int = 0
    # Keys of the previous layout still to drain (the migration).
    legacy_windows: list[str] = field(default_factory=list)
    legacy_snapshots: list[str] = field(default_factory=list)

    @property
    def oldest_hour(self) -> datetime | None:
        """The start of the oldest pending hour (live or snapshotted), None if nothing waits."""
        hours = [keys.hour_start(hour) for _, hour in self.windows]
        hours += [keys.hour_start(entry.hour) for _, entry in self.snapshots]
        hours += [keys.legacy_window_start_of_key(k) for k in (*self.legacy_windows, *self.legacy_snapshots)]
        return min(hours, default=None)

    def oldest_age_seconds(self, now: datetime | None = None) -> float:
        """Seconds since the oldest pending hour began; 0 when nothing waits."""
        oldest = self.oldest_hour
        if oldest is None:
            return 0.0
        return max(((now or datetime.now(UTC)) - oldest).total_seconds(), 0.0)

    def hash_keys(self) -> list[str]:
        """Every key that may hold pending groups (bucket keys may not all exist)."""
        found = [key for tag, hour in self.windows for key in keys.window_bucket_keys(tag, hour)]
        found += [
            key
            for tag, entry in self.snapshots
            for key in keys.snapshot_bucket_keys(tag, entry.hour, entry.batch_id)
        ]
        return found + self.legacy_windows + self.legacy_snapshots


def pending_windows(redis: Redis) -> PendingWindows:
    """The pending windows and snapshots, from each tag's registry (and the v1 sets)."""
    with redis.pipeline(transaction=False) as pipe:
        for tag in keys.SHARD_TAGS:
            pipe.hgetall(keys.registry_key(tag))
        pipe.smembers(keys.LEGACY_PENDING_WINDOWS)
        pipe.smembers(keys.LEGACY_PENDING_SNAPSHOTS)
        *registries, legacy_windows, legacy_snapshots = pipe.execute()
    windows: list[tuple[str, int]] = []
    snapshots: list[tuple[str, keys.SnapshotEntry]] = []
    in_grace = corrupt = 0
    for tag, fields in zip(keys.SHARD_TAGS, registries, strict=True):
        registry = keys.parse_registry(tag, fields)
        windows += [(tag, hour) for hour in registry.live_hours]
        snapshots += [(tag, entry) for entry in registry.in_state(keys.PENDING_STATE)]
        in_grace += len(registry.in_state(keys.DONE_STATE))
        corrupt += len(registry.in_state(keys.CORRUPT_STATE))
    return PendingWindows(
        windows=sorted(windows),
        snapshots=sorted(snapshots, key=lambda item: (item[1].hour, item[0], str(item[1].batch_id))),
        in_grace=in_grace,
        corrupt=corrupt,
        legacy_windows=sorted(member.decode() for member in legacy_windows),
        legacy_snapshots=sorted(member.decode() for member in legacy_snapshots),
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
            value=len(pending.windows) + len(pending.legacy_windows),
        )
        yield GaugeMetricFamily(
            "ingestor_redis_snapshots_pending",
            "Snapshots taken but not persisted yet (a flush in progress, or one that failed)",
            value=len(pending.snapshots) + len(pending.legacy_snapshots),
        )
        yield GaugeMetricFamily(
            "ingestor_redis_snapshots_in_grace",
            "Snapshots persisted and still readable by pending-usage reads until their grace ends",
            value=pending.in_grace,
        )
        yield GaugeMetricFamily(
            "ingestor_redis_oldest_pending_window_age_seconds",
            "Seconds since the start of the oldest hour still waiting in Redis (0: none)",
            value=pending.oldest_age_seconds(),
        )


def pending_groups(redis: Redis, hash_keys: list[str]) -> int:
    """(tenant, sku, unit, hour) groups held in these window/snapshot hashes.

    One `n|` count field per group (amounts may spill over several fields), read with
    HSCAN so a huge hash never blocks Redis, and counted once per hour whichever tags
    and snapshots hold it (a set of them: meant for an operator's command).
    Keys that do not exist (most buckets of an hour) are skipped in one round trip.
    """
    with redis.pipeline(transaction=False) as pipe:
        for key in hash_keys:
            pipe.exists(key)
        existing = [key for key, found in zip(hash_keys, pipe.execute(), strict=True) if found]
    pattern = keys.COUNT_FIELD_PREFIX + b"*"
    # Distinct per hour: on a cluster a group's pulses spread over every tag's hashes.
    groups = {
        (keys.hour_stamp_in_key(key), field)
        for key in existing
        for field, _ in redis.hscan_iter(key, match=pattern, count=1000)
    }
    return len(groups)


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
