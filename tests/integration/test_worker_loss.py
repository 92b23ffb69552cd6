"""Guarantee 1 with a real worker: SIGKILL mid-batch loses nothing and counts nothing twice."""

from __future__ import annotations

import signal
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from ingestor.pulses import keys
from tests.support.ledger import Ledger, persisted_sums
from tests.support.services import settings_for_tests
from tests.support.worker import WorkerProcess, wait_until_idle

pytestmark = pytest.mark.usefixtures("clean_state")


def test_worker_killed_mid_batch_loses_nothing_and_counts_once(producer, redis_client, database, app):
    # Tiny Lua chunks make one batch take long enough to be killed in the middle.
    settings = settings_for_tests(redis_chunk_size=5)
    hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    ledger = Ledger()
    batch = []
    for i in range(20_000):
        amount = f"{i % 7}.{i % 1000:06d}"
        batch.append({"tenant": f"t{i % 3}", "product_sku": "vm", "use_unity": "hour",
                      "used_amount": amount, "timestamp": hour.isoformat()})  # fmt: skip
        ledger.add(f"t{i % 3}", "vm", "hour", hour, amount)
    producer.send_task("ingestor.ingest_pulses", args=[batch], exchange="pulses", routing_key="pulses")

    doomed = WorkerProcess(settings, "doomed", concurrency=1)
    doomed.start(producer)
    deadline = time.monotonic() + 60
    while not 0 < redis_client.dbsize() and time.monotonic() < deadline:
        time.sleep(0.01)
    doomed.stop(signal.SIGKILL)
    partially_counted = sum(
        int(v) for f, v in redis_client.hgetall(keys.window_key(keys.hour_of(hour))).items() if f.startswith(b"n|")
    )
    assert 0 < partially_counted < len(batch), "the kill must land mid-batch"

    survivor = WorkerProcess(settings, "survivor", concurrency=1)
    survivor.start(producer)
    try:
        wait_until_idle(producer, survivor, ("pulses",))
        app.extensions["pulses"].persister.persist_pending()
    finally:
        survivor.stop()

    assert persisted_sums(database) == ledger.expected()
    assert sum(count for _, count in ledger.expected().values()) == len(batch)
    assert sum(amount for amount, _ in ledger.expected().values()) > Decimal(0)
