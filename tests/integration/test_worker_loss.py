"""Guarantee 1 with a real worker: SIGKILL mid-batch loses nothing and counts nothing twice."""

from __future__ import annotations

import random
import signal
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from ingestor.pulses.task_names import INGEST_PULSES
from tests.support.faults import counted_pulses, wait_for
from tests.support.ledger import Ledger, hour_ago, make_pulses, persisted_sums
from tests.support.services import settings_for_tests
from tests.support.windows import live_fields
from tests.support.worker import WorkerProcess, wait_until_idle

pytestmark = pytest.mark.usefixtures("clean_state")


def drain_and_persist(survivor: WorkerProcess, producer, app) -> None:
    """Run `survivor` until the pulses queue is drained, stop it, persist the windows."""
    survivor.start(producer)
    try:
        wait_until_idle(producer, survivor, ("pulses",))
        app.extensions["pulses"].persister.persist_pending()
    finally:
        survivor.stop()


def test_worker_killed_mid_batch_loses_nothing_and_counts_once(producer, redis_client, database, app):
    # Tiny Lua chunks make one batch take long enough to be killed in the middle.
    settings = settings_for_tests(redis_chunk_size=5)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    ledger = Ledger()
    batch = make_pulses(ledger, 20_000, prefix="doomed", hour=hour, with_ids=False)
    producer.send_task(INGEST_PULSES, args=[batch], exchange="pulses", routing_key="pulses")

    doomed = WorkerProcess(settings, "doomed", concurrency=1)
    doomed.start(producer)

    def counted() -> int:
        return sum(int(v) for f, v in live_fields(redis_client, hour).items() if f.startswith(b"n|"))

    # Until a first chunk is counted (the worker's first write is the id index's
    # upgrade mark, before any count: killing on it left nothing counted).
    deadline = time.monotonic() + 60
    while not counted() and time.monotonic() < deadline:
        time.sleep(0.01)
    doomed.stop(signal.SIGKILL)
    partially_counted = counted()
    assert 0 < partially_counted < len(batch), "the kill must land mid-batch"

    drain_and_persist(WorkerProcess(settings, "survivor", concurrency=1), producer, app)

    assert persisted_sums(database) == ledger.expected()
    assert sum(count for _, count in ledger.expected().values()) == len(batch)
    assert sum(amount for amount, _ in ledger.expected().values()) > Decimal(0)


@pytest.mark.faults
def test_worker_killed_again_and_again_loses_nothing_and_counts_once(producer, redis_client, database, app):
    # Three SIGKILLs at seeded random points of a stream of batches, each followed by
    # a fresh worker: every kill strands a batch half counted, which the next worker
    # gets back from RabbitMQ. Batches with and without ids, both dedupe paths.
    settings = settings_for_tests(redis_chunk_size=5)  # slow batches, to be killed inside
    hour = hour_ago(1)
    ledger = Ledger()
    batches = [make_pulses(ledger, 10_000, prefix=f"b{n}", hour=hour, with_ids=n % 2 == 0) for n in range(8)]
    total = sum(len(batch) for batch in batches)
    for batch in batches:
        producer.send_task(INGEST_PULSES, args=[batch], exchange="pulses", routing_key="pulses")

    rng = random.Random(42)
    kills_mid_batch = 0
    for round_ in range(3):
        # One process: a worker counts on while it starts answering pings.
        doomed = WorkerProcess(settings, f"doomed-{round_}", concurrency=1)
        doomed.start(producer)
        try:
            target = min(counted_pulses(redis_client, hour) + rng.randint(1000, 5000), total)
            wait_for(
                lambda target=target: counted_pulses(redis_client, hour) >= target,
                what="some more pulses counted",
            )
        finally:
            doomed.stop(signal.SIGKILL)
        kills_mid_batch += counted_pulses(redis_client, hour) % 10_000 != 0
    assert counted_pulses(redis_client, hour) < total, "the kills must land before the end"
    assert kills_mid_batch > 0, "at least one kill must strand a batch half counted"

    drain_and_persist(WorkerProcess(settings, "survivor-of-three", concurrency=2), producer, app)

    assert persisted_sums(database) == ledger.expected()
