"""Test helpers over the Redis window layout: countable pulses built as the validator
builds them, the fields and keys an hour or a flush leaves in Redis, and flushes that
die at a chosen point."""

from __future__ import annotations

import uuid
from datetime import datetime

import pytest
from redis import Redis

from ingestor.pulses import keys
from ingestor.pulses.aggregation import CountablePulse, pulse_with_id
from ingestor.pulses.persistence import Persister


def countable(
    tenant: str, pulse_id: str, hour: datetime, micro_units: int, sku: str = "vm", unit: str = "hour"
) -> CountablePulse:
    """A pulse with an id, ready for `PulseCounter.count`, in its tag and tenant bucket."""
    tag = keys.tag_of_dedupe_key(keys.dedupe_key_for_id(tenant, pulse_id))
    return pulse_with_id(
        tenant,
        pulse_id,
        keys.window_key(tag, keys.hour_of(hour), tenant),
        keys.group_field(tenant, sku, unit),
        micro_units,
    )


def live_fields(redis_client: Redis, hour: datetime) -> dict[bytes, bytes]:
    """Every field of the live buckets of `hour`, over every tag (a group is in one)."""
    fields: dict[bytes, bytes] = {}
    with redis_client.pipeline(transaction=False) as pipe:
        for tag in keys.SHARD_TAGS:
            for key in keys.window_bucket_keys(tag, keys.hour_of(hour)):
                pipe.hgetall(key)
        for part in pipe.execute():
            fields.update(part)
    return fields


def pending_flush_keys(redis_client: Redis) -> list[bytes]:
    """What still waits for a flush: [] once all is persisted.

    Live buckets, snapshot buckets not committed (committed ones keep an expiry, their
    grace), registry entries of live hours or pending batches, and v1 keys.
    """
    found = [
        key
        for key in redis_client.keys(keys.PREFIX + "{*}:[ws]:*")
        if redis_client.ttl(key) == -1  # no expiry: live, or renamed and not committed
    ]
    for tag in keys.SHARD_TAGS:
        registry = keys.registry_key(tag).encode()
        for name, value in redis_client.hgetall(registry).items():
            if name.startswith(b"w:") or value.endswith(b"|p"):
                found.append(registry + b" " + name)
    found += redis_client.keys(keys.LEGACY_WINDOW_PREFIX + "*")
    found += redis_client.keys(keys.LEGACY_SNAPSHOT_PREFIX + "*")
    found += [
        key.encode()
        for key in (keys.LEGACY_PENDING_WINDOWS, keys.LEGACY_PENDING_SNAPSHOTS)
        if redis_client.exists(key)
    ]
    return sorted(found)


def pending_snapshot_batches(redis_client: Redis) -> list[keys.SnapshotEntry]:
    """The batches renamed but not committed, over every tag."""
    return [
        entry
        for tag in keys.SHARD_TAGS
        for entry in keys.parse_registry(tag, redis_client.hgetall(keys.registry_key(tag))).in_state(
            keys.PENDING_STATE
        )
    ]


def leave_pending_batch(
    redis_client: Redis, hour: datetime, fields: dict[bytes, int | bytes], tag: str | None = None
) -> tuple[uuid.UUID, list[str]]:
    """Leave `fields` as a crashed flush leaves a batch: renamed, registered pending,
    not committed. Each field goes to its tenant's bucket (an unreadable one to bucket
    0). Returns the batch id and the snapshot keys written."""
    tag = tag or keys.SHARD_TAGS[0]
    batch_id = uuid.uuid4()
    per_key: dict[str, dict[bytes, int | bytes]] = {}
    for name, value in fields.items():
        try:
            tenant, _, _ = keys.parse_group_field(name.partition(b"|")[2])
            bucket = keys.bucket_of(tenant)
        except ValueError:
            bucket = 0
        key = keys.snapshot_bucket_key(tag, keys.hour_of(hour), batch_id, bucket)
        per_key.setdefault(key, {})[name] = value
    for key, mapping in per_key.items():
        redis_client.hset(key, mapping=mapping)
    redis_client.hset(
        keys.registry_key(tag),
        keys.snapshot_field(batch_id),
        f"{keys.hour_stamp(keys.hour_of(hour))}|{keys.PENDING_STATE}",
    )
    return batch_id, sorted(per_key)


class SimulatedCrash(Exception):
    """Stands for the flush's process dying at this point."""


def flush_dying_at(persister: Persister, point: str) -> None:
    """Run a flush that dies at `point` of its first batch: `before_commit` (renamed,
    nothing written to PostgreSQL) or `after_commit` (committed, DONE not run)."""
    write = persister._write

    def write_and_die(*args, **kwargs):
        if point == "after_commit":
            write(*args, **kwargs)
        raise SimulatedCrash(point)

    persister._write = write_and_die  # type: ignore[method-assign]
    try:
        with pytest.raises(SimulatedCrash):
            persister.persist_pending()
    finally:
        del persister._write
