"""How a flush sums a snapshot's fields (in PostgreSQL): exact, grouped, and guarded.

Each test writes a snapshot batch by hand (its tenants' bucket hashes and its registry
entry), as a crashed flush would leave it, and persists it through the real Redis and
PostgreSQL.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from ingestor.pulses import keys
from ingestor.pulses.snapshot_rows import CorruptSnapshot
from tests.support.ledger import persisted_sums
from tests.support.windows import countable, leave_pending_batch, pending_snapshot_batches

pytestmark = pytest.mark.usefixtures("clean_state")

NEAR_MAX = 2**63 - 1
HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)


def count_field(*group: str) -> bytes:
    return keys.COUNT_FIELD_PREFIX + keys.group_field(*group)


def amount_field(*group: str, spill: int | None = None) -> bytes:
    prefix = keys.AMOUNT_FIELD_PREFIX if spill is None else b"a%d|" % spill
    return prefix + keys.group_field(*group)


def persist(app, redis_client, fields: dict[bytes, int | bytes]) -> tuple[uuid.UUID, list[str]]:
    """Leave `fields` as a snapshot of a crashed flush, then run a flush."""
    batch = leave_pending_batch(redis_client, HOUR, fields)
    app.extensions["pulses"].persister.persist_pending()
    return batch


def test_spills_are_summed_exactly_past_64_bits_and_28_digits(app, redis_client, database):
    fields = {count_field("acme", "vm", "GB"): 5, amount_field("acme", "vm", "GB"): 1}
    for spill in range(1, 1001):
        fields[amount_field("acme", "vm", "GB", spill=spill)] = NEAR_MAX
    persist(app, redis_client, fields)

    micro = 1000 * NEAR_MAX + 1
    assert persisted_sums(database) == {("acme", "vm", "GB", HOUR): (Decimal(micro).scaleb(-6), 5)}


def test_groups_are_kept_apart_and_decoded(app, redis_client, database):
    tricky = [
        ("a:b", "c", "d"),
        ("a", "b:c", "d"),
        ("a|b", "n|x", "KB/sec"),
        ('quo"te,', "[", "]"),
        ("Ünïcødé", "テナント", "😀"),
        ("back\\slash", "'", "x"),
    ]
    fields = {}
    for i, group in enumerate(tricky, start=1):
        fields[count_field(*group)] = i
        fields[amount_field(*group)] = i * 1_000_001
    persist(app, redis_client, fields)

    assert persisted_sums(database) == {
        (*group, HOUR): (Decimal(i * 1_000_001).scaleb(-6), i) for i, group in enumerate(tricky, start=1)
    }


def test_a_count_without_an_amount_sums_to_zero(app, redis_client, database):
    persist(app, redis_client, {count_field("t", "s", "u"): 2})

    assert persisted_sums(database) == {("t", "s", "u", HOUR): (Decimal(0), 2)}


@pytest.mark.parametrize(
    "bad_field",
    [
        b"x|" + keys.group_field("t", "s", "u"),
        b"a1x|" + keys.group_field("t", "s", "u"),
        amount_field("orphan", "s", "u"),
    ],
)
def test_a_corrupt_snapshot_is_set_aside_whole_and_the_others_persist(app, redis_client, database, bad_field):
    fields = {count_field("t", "s", "u"): 1, amount_field("t", "s", "u"): 1, bad_field: 5}
    healthy = HOUR + timedelta(hours=1)
    app.extensions["pulses"].counter.count([countable("ok", "1", healthy, 2_500_000, "s", "u")])
    batch_id, snapshot_keys = persist(app, redis_client, fields)

    # Nothing of the corrupt one is counted; it waits, whole, for an operator.
    assert persisted_sums(database) == {("ok", "s", "u", healthy): (Decimal("2.5"), 1)}
    assert redis_client.smembers(keys.CORRUPT_SNAPSHOTS) == {key.encode() for key in snapshot_keys}
    registry = keys.registry_key(keys.SHARD_TAGS[0])
    assert redis_client.hget(registry, keys.snapshot_field(batch_id)).endswith(b"|c")
    assert pending_snapshot_batches(redis_client) == []
    assert sum(redis_client.hlen(key) for key in snapshot_keys) == 3
    assert all(redis_client.ttl(key) == -1 for key in snapshot_keys), "set aside: no expiry"
    # Later flushes leave it alone.
    app.extensions["pulses"].persister.persist_pending()
    assert sum(redis_client.hlen(key) for key in snapshot_keys) == 3
    with pytest.raises(CorruptSnapshot):
        app.extensions["pulses"].persister._write(batch_id, HOUR, snapshot_keys)
