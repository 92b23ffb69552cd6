"""Pulses with an id (and pulses alone in their message) deduplicated by the id index
in the real Redis: at most 16 bytes an id held (v1 held a key of about 96 bytes), the
horizon honoured between H and H + H/2 + 1 s, every partition kept under the intset
limit as the rate grows, an id found only when both its members are there, and what
v1 and the previous releases recorded still honoured (for one horizon after the
upgrade, never on a fresh install)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from functools import partial

import pytest

from ingestor.pulses import keys
from ingestor.pulses.aggregation import CountablePulse, PulseCounter, pulse_with_id
from ingestor.pulses.ingest import PulseValidator

pytestmark = pytest.mark.usefixtures("clean_state")

TAG = keys.SHARD_TAGS[0]
HOUR = keys.hour_of(datetime.now(UTC))
WINDOW = keys.window_key(TAG, HOUR, "acme")
GROUP = keys.group_field("acme", "vm", "h")


def with_ids(ids) -> list[CountablePulse]:
    return [pulse_with_id("acme", pulse_id, WINDOW, GROUP, 1) for pulse_id in ids]


def partitions(redis_client) -> list[bytes]:
    return list(redis_client.scan_iter(match=keys.id_index_key(TAG) + ":*", count=1000))


def index_buckets(redis_client) -> dict[int, list[int]]:
    """The index's live buckets: start second -> the partition count of each segment."""
    fields = redis_client.hgetall(keys.id_index_key(TAG))
    return {
        int(name[1:]): [int(p) for p in value.split(b"|")[1].split(b",")]
        for name, value in fields.items()
        if name.startswith(b"s")
    }


def test_an_id_held_costs_at_most_16_bytes(redis_client):
    counter = PulseCounter(redis_client, dedupe_horizon_seconds=3600, chunk_size=5000)
    n = 100_000
    assert counter.count(with_ids(str(uuid.uuid4()) for _ in range(n))) == n

    dedupe = [
        key for key in redis_client.scan_iter(count=1000) if b":w:" not in key and b":pending" not in key
    ]
    held = sum(redis_client.memory_usage(key, samples=0) for key in dedupe)
    assert held / n <= 16, f"{held / n:.1f} bytes an id"
    assert all(redis_client.object("encoding", key) == b"intset" for key in partitions(redis_client))


def test_of_two_pulses_with_one_id_in_a_batch_the_first_counts(redis_client):
    # The script gets a call's ids sorted by path: the sort must keep their order.
    counter = PulseCounter(redis_client, dedupe_horizon_seconds=3600, chunk_size=5000)
    other = keys.group_field("acme", "other-sku", "h")
    for twin in (f"twin-{i}" for i in range(50)):
        batch = with_ids(f"{twin}-filler-{i}" for i in range(40))
        batch.insert(7, pulse_with_id("acme", twin, WINDOW, GROUP, 5))
        batch.insert(31, pulse_with_id("acme", twin, WINDOW, other, 1_000_000))
        assert counter.count(batch) == 41
    assert redis_client.hget(WINDOW, b"a|" + GROUP) == str(50 * (40 + 5)).encode()
    assert redis_client.hget(WINDOW, b"a|" + other) is None


def test_a_redelivered_batch_counts_once(redis_client):
    counter = PulseCounter(redis_client, dedupe_horizon_seconds=3600, chunk_size=7)
    batch = with_ids(f"id-{i}" for i in range(40))

    assert counter.count(batch[5:23]) == 18  # the chunks a worker counted before dying
    assert counter.count(batch + batch[:3]) == 22
    assert redis_client.hget(WINDOW, b"n|" + GROUP) == b"40"


def test_an_id_is_remembered_a_horizon_and_forgotten_within_half_more(redis_client):
    # H = 4 s: buckets of 2 s, so an id is remembered at least 4 s, at most 4 + 2 + 1 s.
    counter = PulseCounter(redis_client, dedupe_horizon_seconds=4, chunk_size=100)
    counted_at = time.monotonic()
    assert counter.count(with_ids(["early"])) == 1
    (first_bucket,) = index_buckets(redis_client)
    stop = int(redis_client.hget(keys.id_index_key(TAG), f"s{first_bucket}").split(b"|")[0])
    assert stop - first_bucket == 2  # 3 live buckets a new id is looked up in, not 5
    # New ids keep arriving in later buckets, as in production.
    while time.monotonic() - counted_at < 3.8:
        assert counter.count(with_ids(["early"])) == 0
        counter.count(with_ids([str(uuid.uuid4())]))
        time.sleep(0.2)
    time.sleep(max(0.0, counted_at + 7.3 - time.monotonic()))
    assert counter.count(with_ids(["early"])) == 1
    # Its bucket is gone, partitions and index fields: memory is given back.
    assert not list(redis_client.scan_iter(match=f"{keys.id_index_key(TAG)}:{first_bucket}:*"))
    assert first_bucket not in index_buckets(redis_client)


def test_partitions_stay_under_the_intset_limit_as_the_rate_grows(redis_client):
    # A limit of 64 entries (this Redis converts at 512, so a breach is seen by SCARD).
    counter = PulseCounter(redis_client, dedupe_horizon_seconds=4, chunk_size=1000, set_entries=64)
    # The first bucket has no predecessor to size from: its first segment is sized for
    # the first call (1000 ids, 40 a partition: 64), a successor takes the third.
    assert counter.count(with_ids(f"a{i}" for i in range(3000))) == 3000
    (first,) = index_buckets(redis_client).values()
    assert first == [64, 256]
    time.sleep(2.1)  # the next bucket, sized from this one: 3000 / 32 -> 128 partitions
    assert counter.count(with_ids(f"b{i}" for i in range(3000))) == 3000
    assert counter.count(with_ids(f"a{i}" for i in range(3000))) == 0

    buckets = index_buckets(redis_client)
    assert len(buckets) == 2
    assert buckets[max(buckets)] == [128]
    assert max(redis_client.scard(key) for key in partitions(redis_client)) <= 64 + 1  # its sentinel


def test_an_id_counted_by_v1_is_not_counted_again(redis_client):
    counter = PulseCounter(redis_client, dedupe_horizon_seconds=3600, chunk_size=100)
    (old, new) = with_ids(["counted-by-v1", "new"])
    redis_client.set(old.v1_key(), 1, ex=3600)  # what a v1 worker left

    assert counter.count([old, new]) == 1
    assert counter.count([old, new]) == 0


def one_pulse_message(settings, message_id: str) -> CountablePulse:
    body = [{"tenant": "acme", "product_sku": "vm", "use_unity": "h", "used_amount": "1"}]
    (pulse,), _ = PulseValidator(settings).split(
        body, fallback_key=partial(keys.position_in_message, message_id), received_at=datetime.now(UTC)
    )
    return pulse


def test_a_message_of_one_pulse_without_id_is_recorded_in_the_index_not_a_ledger(settings, redis_client):
    counter = PulseCounter(redis_client, dedupe_horizon_seconds=3600, chunk_size=100)
    pulses = [one_pulse_message(settings, f"task-{i}") for i in range(300)]

    assert counter.count(pulses) == 300
    assert counter.count(pulses) == 0
    assert not list(redis_client.scan_iter(match="ingestor:{*}:m:*"))
    held = sum(redis_client.memory_usage(key, samples=0) for key in partitions(redis_client))
    assert held / 300 <= 16


def test_a_message_of_one_pulse_counted_by_the_previous_release_is_not_counted_again(settings, redis_client):
    counter = PulseCounter(redis_client, dedupe_horizon_seconds=3600, chunk_size=100)
    pulse = one_pulse_message(settings, "task-before-upgrade")
    redis_client.setbit(pulse.ledger, 0, 1)  # its bit in its message's ledger

    assert counter.count([pulse]) == 0


def test_v1_keys_are_read_for_one_horizon_after_the_upgrade_only(redis_client):
    # What the previous release left: its registry, and v1 keys of two ids.
    redis_client.hset(keys.registry_key(TAG), "v", 1)
    early, late, fresh = with_ids(["counted-by-v1", "counted-by-v1-too", "new"])
    redis_client.set(early.v1_key(), 1)
    redis_client.set(late.v1_key(), 1)
    counter = PulseCounter(redis_client, dedupe_horizon_seconds=2, chunk_size=100)

    assert counter.count([early, fresh]) == 1  # the first count of this release
    until = int(redis_client.hget(keys.id_index_key(TAG), keys.ID_INDEX_LEGACY_FIELD))
    assert until - 2 <= int(redis_client.time()[0]) <= until
    time.sleep(max(0.0, until - float(redis_client.time()[0]) + 0.1))
    # A horizon on, v1 keys are not read (as in production, where they have expired).
    assert counter.count([late]) == 1


def test_a_fresh_install_never_reads_v1_keys(redis_client):
    first, planted = with_ids(["first", "planted"])
    assert PulseCounter(redis_client, dedupe_horizon_seconds=3600, chunk_size=100).count([first]) == 1
    assert redis_client.hget(keys.id_index_key(TAG), keys.ID_INDEX_LEGACY_FIELD) == b"0"
    redis_client.set(planted.v1_key(), 1)  # a v1 key, as no fresh install has

    # Another process of this release: the moment decided on the first count stands.
    assert PulseCounter(redis_client, dedupe_horizon_seconds=3600, chunk_size=100).count([planted]) == 1


def with_fingerprints(*fingerprints: bytes) -> list[CountablePulse]:
    return [
        CountablePulse(b"d" + fingerprint[:11], WINDOW, GROUP, 1, fingerprint=fingerprint)
        for fingerprint in fingerprints
    ]


def test_an_id_is_found_only_when_both_its_members_are_there(redis_client):
    # Same partition and wide member (bytes 0-11), another narrow member (byte 12): a
    # different id, which a lookup by the wide member alone would call a duplicate.
    counter = PulseCounter(redis_client, dedupe_horizon_seconds=3600, chunk_size=100)
    counter._bucket_seconds = 1  # buckets of a second: the next call's is another
    first, second = with_fingerprints(bytes(range(13)), bytes(range(12)) + b"\xff")

    assert counter.count([first]) == 1
    assert counter.count([second, first]) == 1  # in the bucket's last segment (SADD)
    time.sleep(1.1)
    # In a closed bucket: looked up one by one, then for the whole call at once.
    (third,) = with_fingerprints(bytes(range(12)) + b"\xfe")
    assert counter.count([third]) == 1
    (fourth,) = with_fingerprints(bytes(range(12)) + b"\xfd")
    assert counter.count([first, second, fourth, *with_ids(["a", "b"])]) == 3
    assert len(keys.parse_id_index(redis_client.hgetall(keys.id_index_key(TAG)))) >= 2


def test_a_call_too_large_for_its_segment_opens_the_next_first(redis_client):
    counter = PulseCounter(redis_client, dedupe_horizon_seconds=3600, chunk_size=5000, set_entries=64)
    assert counter.count(with_ids(f"before-{i}" for i in range(20))) == 20
    # 6,020 ids where the segment (1 partition) has room for 40: a successor takes them
    # all, sized for them before the first (they come sorted by path: the first
    # partitions take theirs first). The ids of the segment before, and those counted
    # earlier in the same call, are still found.
    fresh = with_ids(f"a{i}" for i in range(3000))
    assert counter.count(fresh + with_ids(f"before-{i}" for i in range(20)) + fresh) == 3000
    (bucket,) = keys.parse_id_index(redis_client.hgetall(keys.id_index_key(TAG)))
    assert bucket.segments == [1, 256]
    assert all(redis_client.object("encoding", key) == b"intset" for key in partitions(redis_client))
    # And a later call looks the small segment up for all its pulses at once.
    assert counter.count(fresh + with_ids(f"b{i}" for i in range(500))) == 500
    assert redis_client.hget(WINDOW, b"n|" + GROUP) == b"3520"


def plant_previous_release_bucket(redis_client, pulse: CountablePulse, horizon: int) -> None:
    """Record `pulse` as the release before did: a bucket of hashes of 9-byte fields."""
    now = int(redis_client.time()[0])
    start, partitions = now - 10, 4
    index = keys.id_index_key(TAG)
    redis_client.hset(
        index, mapping={f"b{start}": f"{now + horizon // 2}|{partitions}", f"c{start}": 1, f"t{start}": 1}
    )
    partition = int.from_bytes(pulse.fingerprint[:4], "big") // (2**32 // partitions)
    redis_client.hset(f"{index}:{start}:{partitions}:{partition}", pulse.fingerprint[4:], 1)


def test_an_id_the_previous_release_recorded_in_its_hashes_is_not_counted_again(redis_client):
    old, new = with_ids(["counted-by-the-hash-index", "new"])
    plant_previous_release_bucket(redis_client, old, horizon=3600)
    counter = PulseCounter(redis_client, dedupe_horizon_seconds=3600, chunk_size=100)
    counter._needs[TAG] = ""  # as a process that last saw no such bucket: refused, then sent again

    assert counter.count([old, new]) == 1
    assert "h" in counter._needs[TAG]  # (and "v": the Redis held a previous release's keys)
    assert counter.count([old, new]) == 0


def test_v1_keys_a_counter_stopped_sending_are_asked_for_again(redis_client):
    # A process that last heard no v1 key could exist, on a Redis that says one may.
    counter = PulseCounter(redis_client, dedupe_horizon_seconds=3600, chunk_size=100)
    assert counter.count(with_ids(["first"])) == 1
    assert counter._needs[TAG] == ""
    (old,) = with_ids(["counted-by-v1"])
    redis_client.set(old.v1_key(), 1)
    redis_client.hset(keys.id_index_key(TAG), keys.ID_INDEX_LEGACY_FIELD, int(redis_client.time()[0]) + 60)

    assert counter.count([old]) == 0
    assert counter._needs[TAG] == "v"
