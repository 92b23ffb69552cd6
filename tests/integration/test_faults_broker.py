"""Guarantees 1 and 2 through RabbitMQ connection losses.

- The API's connection to RabbitMQ cut again and again (through a proxy) while
  clients POST pulses: every answer is 202 or 503, never a 500; a client retries a
  503 (as the README tells it to) and the ids make a publish that did land count
  once; a 202 whose pulses never arrive shows up as a sum short of the ledger.
- A worker's connection to RabbitMQ cut in the middle of a batch: the task's ack
  cannot reach the broker, which redelivers the message; its pulses count once.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from ingestor import create_app
from ingestor.pulses.task_names import INGEST_PULSES
from tests.support.api import post_until_accepted
from tests.support.faults import TASK_QUEUES, counted_pulses, persist_through_worker, proxied, wait_for
from tests.support.ledger import Ledger, hour_ago, make_pulses, persisted_sums
from tests.support.worker import WorkerProcess, wait_until_idle

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("clean_state")]


def flap(proxy, stop: threading.Event, seed: int, up: tuple[float, float], down: tuple[float, float]) -> None:
    """Cut and restore `proxy` at random (seeded) intervals until `stop` is set."""
    rng = random.Random(seed)
    while not stop.wait(rng.uniform(*up)):
        with proxy.outage():
            stop.wait(rng.uniform(*down))


def test_api_publishing_through_a_flapping_broker_answers_202_counted_or_503(
    settings, auth, producer, database
):
    hour = hour_ago(2)
    ledger = Ledger()
    statuses: list[int] = []
    with proxied(settings) as proxies:
        client = create_app(proxies.settings).test_client()
        stop = threading.Event()
        chaos = threading.Thread(target=flap, args=(proxies.broker, stop, 1234, (0.05, 0.4), (0.05, 0.3)))
        chaos.start()
        try:
            deadline = time.monotonic() + 8
            n = 0
            while time.monotonic() < deadline or statuses.count(503) == 0:
                assert time.monotonic() < deadline + 30, "no 503 in 38 s of a flapping broker"
                pulses = make_pulses(ledger, 25, prefix=f"http-{n}", hour=hour)
                body = post_until_accepted(client, auth, pulses, statuses)
                assert body["accepted"] == len(pulses) and body["rejected"] == []
                n += 1
        finally:
            stop.set()
            chaos.join()
    # Only now a worker: everything the API answered 202 for must be in the queue.
    worker = WorkerProcess(settings, "after-flapping")
    worker.start(producer)
    try:
        persist_through_worker(producer, worker)
    finally:
        worker.stop()

    assert set(statuses) == {202, 503}
    assert persisted_sums(database) == ledger.expected()


def test_worker_cut_from_the_broker_mid_batch_counts_the_redelivery_once(
    producer, app, settings, database, redis_client
):
    hour = hour_ago(1)
    ledger = Ledger()
    big = make_pulses(ledger, 20_000, prefix="big", hour=hour, with_ids=False)
    with proxied(settings, redis_chunk_size=5) as proxies:
        worker = WorkerProcess(proxies.settings, "broker-cut", concurrency=1)
        worker.start(producer)
        try:
            producer.send_task(INGEST_PULSES, args=[big], exchange="pulses", routing_key="pulses")
            wait_for(lambda: counted_pulses(redis_client, hour) > 1000, what="the batch half counted")
            with proxies.broker.outage():
                counted_at_cut = counted_pulses(redis_client, hour)
                time.sleep(1)
            wait_for(
                lambda: counted_pulses(redis_client, hour) >= len(big), timeout=60, what="the batch counted"
            )
            wait_until_idle(producer, worker, TASK_QUEUES)
        finally:
            worker.stop()
    app.extensions["pulses"].persister.persist_pending()

    assert 0 < counted_at_cut < len(big), "the cut must land in the middle of the batch"
    assert worker.log.read_text().count("] received") == 2, "the batch was delivered again after the cut"
    assert persisted_sums(database) == ledger.expected()
