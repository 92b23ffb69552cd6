"""Pulses without id deduplicated by one ledger (a bitmap) per message, in the real
Redis: a redelivery counts nothing twice, a partly counted message counts the rest
once, v1 keys are still honoured, the horizon holds, and the memory per pulse is a
fraction of a byte (the v1 layout held a key of about 100 bytes per pulse)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from functools import partial

import pytest

from ingestor.pulses import keys
from ingestor.pulses.aggregation import CountablePulse, PulseCounter
from ingestor.pulses.ingest import PulseValidator

pytestmark = pytest.mark.usefixtures("clean_state")

TAG = keys.SHARD_TAGS[0]


def message(settings, message_id: str, n: int) -> list[CountablePulse]:
    """The countable pulses of a message of `n` pulses without id, as a worker splits it."""
    pulses = [{"tenant": "acme", "product_sku": "vm", "use_unity": "h", "used_amount": "1"} for _ in range(n)]
    countable, rejected = PulseValidator(settings).split(
        pulses, fallback_key=partial(keys.position_in_message, message_id), received_at=datetime.now(UTC)
    )
    assert rejected == []
    return countable


def count_of(redis_client, pulses: list[CountablePulse]) -> int:
    return int(redis_client.hget(pulses[0].window_key, b"n|" + pulses[0].group) or 0)


def test_a_redelivered_message_counts_once_in_one_ledger_key(settings, redis_client):
    counter = PulseCounter(redis_client, dedupe_horizon_seconds=3600, chunk_size=100)
    pulses = message(settings, "task-1", 250)

    assert counter.count(pulses) == 250
    assert counter.count(pulses) == 0
    assert count_of(redis_client, pulses) == 250
    ledger = keys.message_ledger_key(TAG, pulses[0].ledger[-keys.DEDUPE_DIGEST_BYTES :])
    assert {p.ledger for p in pulses} == {ledger}
    assert redis_client.bitcount(ledger) == 250
    assert 3590 < redis_client.ttl(ledger) <= 3600
    # No per-pulse key: only the registry, the window bucket, the ledger and the id
    # index's hash (naming until when v1 keys may exist).
    assert redis_client.dbsize() == 4


def test_a_message_partly_counted_then_redelivered_counts_each_pulse_once(settings, redis_client):
    counter = PulseCounter(redis_client, dedupe_horizon_seconds=3600, chunk_size=7)
    pulses = message(settings, "task-2", 40)

    assert counter.count(pulses[5:23]) == 18  # the chunks a worker counted before dying
    assert counter.count(pulses) == 22
    assert count_of(redis_client, pulses) == 40


def test_two_messages_never_share_bits(settings, redis_client):
    counter = PulseCounter(redis_client, dedupe_horizon_seconds=3600, chunk_size=100)

    assert counter.count(message(settings, "task-a", 10)) == 10
    assert counter.count(message(settings, "task-b", 10)) == 10


def test_a_pulse_counted_before_the_upgrade_is_not_counted_again(settings, redis_client):
    counter = PulseCounter(redis_client, dedupe_horizon_seconds=3600, chunk_size=100)
    pulses = message(settings, "task-v1", 3)
    redis_client.set(pulses[1].v1_key(), 1, ex=3600)  # what a v1 worker left

    assert counter.count(pulses) == 2
    assert counter.count(pulses) == 0


def test_a_ledger_expires_after_the_horizon(settings, redis_client):
    counter = PulseCounter(redis_client, dedupe_horizon_seconds=1, chunk_size=100)
    pulses = message(settings, "task-short", 4)

    assert counter.count(pulses) == 4
    assert counter.count(pulses) == 0
    time.sleep(1.2)
    assert counter.count(pulses) == 4


def test_dedupe_memory_per_pulse_without_id_is_under_a_byte(settings, redis_client):
    counter = PulseCounter(redis_client, dedupe_horizon_seconds=3600, chunk_size=5000)
    n_messages, per_message = 20, 1000
    for _ in range(n_messages):
        assert counter.count(message(settings, str(uuid.uuid4()), per_message)) == per_message

    not_windows = [
        key
        for key in redis_client.scan_iter(count=1000)
        if b":w:" not in key and key != keys.registry_key(TAG).encode()
    ]
    held = sum(redis_client.memory_usage(key, samples=0) for key in not_windows)
    assert held / (n_messages * per_message) <= 1.0
