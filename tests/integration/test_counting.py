"""Counting in the real Redis: dedupe keys, integer micro-units, 64-bit spills, chunks,
tenant buckets and the registry of live hours."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from ingestor.pulses import keys
from ingestor.pulses.aggregation import CountablePulse, PulseCounter, pulse_with_id
from ingestor.pulses.schema import MAX_AMOUNT, to_micro_units
from tests.support.ledger import persisted_sums
from tests.support.windows import countable

pytestmark = pytest.mark.usefixtures("clean_state")

HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
TAG = keys.SHARD_TAGS[0]
WINDOW = keys.window_key(TAG, keys.hour_of(HOUR), "acme")
REGISTRY = keys.registry_key(TAG)
GROUP = keys.group_field("acme", "storage", "B")


def pulse(n: int, amount: Decimal = Decimal("1.5")) -> CountablePulse:
    return pulse_with_id("acme", f"p{n}", WINDOW, GROUP, to_micro_units(amount))


def test_a_pulse_counted_twice_counts_once_and_its_id_expires_after_the_horizon(redis_client):
    counter = PulseCounter(redis_client, dedupe_horizon_seconds=3600, chunk_size=100)

    assert counter.count([pulse(1), pulse(2)]) == 2
    assert counter.count([pulse(2), pulse(3), pulse(3)]) == 1

    assert redis_client.hgetall(WINDOW) == {b"a|" + GROUP: b"4500000", b"n|" + GROUP: b"3"}
    # Remembered in the id index, a horizon past its bucket's end (half a horizon).
    # Its partition's two sets (wide and narrow members), each given its expiry when made.
    partition_sets = redis_client.keys(keys.id_index_key(TAG) + ":*")
    assert len(partition_sets) == 2
    assert all(3600 < redis_client.ttl(key) <= 3600 + 1800 for key in partition_sets)
    assert redis_client.hgetall(REGISTRY) == {keys.live_field(keys.hour_of(HOUR)).encode(): b"1", b"v": b"1"}


def test_tenants_go_to_their_buckets_and_only_a_new_hour_bumps_the_version(redis_client):
    counter = PulseCounter(redis_client, dedupe_horizon_seconds=60, chunk_size=100)
    hour = keys.hour_of(HOUR)
    tenants = [f"tenant-{i}" for i in range(50)]

    def pulses(prefix, at):
        return [countable(t, f"{prefix}-{t}", at, 1) for t in tenants]

    assert counter.count(pulses("a", HOUR)) == 50
    assert redis_client.hget(REGISTRY, "v") == b"1"
    assert counter.count(pulses("b", HOUR)) == 50  # the same hour: no structural change
    assert counter.count(pulses("b", HOUR)) == 0  # duplicates register nothing
    assert redis_client.hget(REGISTRY, "v") == b"1"
    assert counter.count(pulses("c", HOUR + timedelta(hours=1))) == 50
    assert redis_client.hget(REGISTRY, "v") == b"2"
    assert set(redis_client.hkeys(REGISTRY)) == {
        b"v",
        keys.live_field(hour).encode(),
        keys.live_field(hour + 1).encode(),
    }
    for tenant in tenants:
        bucket = keys.window_bucket_key(TAG, hour, keys.bucket_of(tenant))
        assert redis_client.hget(bucket, b"n|" + keys.group_field(tenant, "vm", "hour")) == b"2"
    assert sorted(redis_client.keys("ingestor:{*}:w:*")) == sorted(
        {keys.window_key(TAG, h, t).encode() for h in (hour, hour + 1) for t in tenants}
    )


def test_chunks_count_every_pulse_once(redis_client):
    counter = PulseCounter(redis_client, dedupe_horizon_seconds=60, chunk_size=3)
    batch = [pulse(i) for i in range(10)] + [pulse(4)]

    assert counter.count(batch) == 10
    assert redis_client.hget(WINDOW, b"n|" + GROUP) == b"10"


def test_sums_beyond_64_bits_spill_and_persist_exactly(app, redis_client, database):
    counter = PulseCounter(redis_client, dedupe_horizon_seconds=60, chunk_size=100)
    assert counter.count([pulse(i, MAX_AMOUNT) for i in range(3)] + [pulse(9, Decimal("0.000001"))]) == 4

    spill_fields = {f for f in redis_client.hkeys(WINDOW) if f.startswith(b"a")}
    assert len(spill_fields) >= 2, spill_fields
    app.extensions["pulses"].persister.persist_pending()

    assert persisted_sums(database) == {
        ("acme", "storage", "B", HOUR): (3 * MAX_AMOUNT + Decimal("0.000001"), 4)
    }


def test_amounts_summed_inside_the_script_stay_exact_around_2_to_the_52(app, redis_client, database):
    # The script sums a cell's amounts in Lua doubles only while they stay below 2^52;
    # past that it adds from the strings. Amounts straddling the limit must add up.
    counter = PulseCounter(redis_client, dedupe_horizon_seconds=60, chunk_size=100)
    micro = [2**51 + 1, 2**51 + 3, 2**51 + 5, 7, 2**52 + 11, 2**52 - 1]
    pulses = [pulse_with_id("acme", f"big{i}", WINDOW, GROUP, m) for i, m in enumerate(micro)]
    assert counter.count(pulses) == len(micro)
    app.extensions["pulses"].persister.persist_pending()

    assert persisted_sums(database) == {("acme", "storage", "B", HOUR): (Decimal(sum(micro)).scaleb(-6), 6)}
