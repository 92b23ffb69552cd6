"""The raw queue's consumer step through a worker's death and its warm shutdown.

SIGKILL mid-stream: every unacked message is redelivered, and a pulse with an id or
an AMQP message_id counts once. SIGTERM: the open batch is counted and acked (or, when
it cannot be counted, handed back to the broker); nothing stays unacked-but-uncounted.
Each test ends with exact sums in PostgreSQL against a Decimal ledger.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.support.ledger import Ledger, persisted_sums
from tests.support.raw import body_of, publish_raw
from tests.support.services import settings_for_tests
from tests.support.windows import live_fields
from tests.support.worker import WorkerProcess, queue_counts, wait_until_settled

pytestmark = pytest.mark.usefixtures("clean_state")

RAW = "pulses.raw"


def last_hour() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)


def counted_pulses(redis_client, hour: datetime) -> int:
    window = live_fields(redis_client, hour)
    return sum(int(value) for field, value in window.items() if field.startswith(b"n|"))


def persist(app) -> None:
    app.extensions["pulses"].persister.persist_pending()


def drain_and_persist(worker: WorkerProcess, producer, app) -> None:
    """Run `worker` until the raw queue is settled, stop it, persist the windows."""
    worker.start(producer)
    try:
        wait_until_settled(worker, RAW)
    finally:
        worker.stop()
    persist(app)


def publish_then_sigterm(worker: WorkerProcess, producer, bodies, until, observe):
    """Start `worker`, publish `bodies`, wait for `until()`, note `observe()`, then
    SIGTERM the worker, which must exit cleanly; return the observation."""
    worker.start(producer)
    try:
        publish_raw(worker.settings.broker_url, bodies)
        wait_for(until)
        observed = observe()
    finally:
        exit_code = worker.stop(signal.SIGTERM)
    assert exit_code == 0, worker.tail()
    return observed


def anonymous_pulses(tenant: str, hour: datetime, amounts: list[str]) -> tuple[list[bytes], Ledger]:
    """One pulse per message, without id nor message_id (the worst case), and their ledger."""
    ledger = Ledger()
    bodies = []
    for amount in amounts:
        bodies.append(
            body_of(
                {
                    "tenant": tenant,
                    "product_sku": "vm",
                    "use_unity": "hour",
                    "used_amount": amount,
                    "timestamp": hour.isoformat(),
                }
            )
        )
        ledger.add(tenant, "vm", "hour", hour, amount)
    return bodies, ledger


def wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)


def test_worker_killed_mid_stream_loses_nothing_and_counts_once(
    producer, settings, redis_client, database, app
):
    # One Lua call per pulse makes a batch slow (thousands of calls) and its end
    # predictable: batches close on size only, at multiples of BATCH pulses.
    batch = 5000
    slow = settings_for_tests(redis_chunk_size=1, raw_batch_size=batch, raw_batch_wait_ms=60_000)
    hour = last_hour()
    ledger = Ledger()
    bodies: list[bytes | tuple[bytes, str | None]] = []
    for i in range(3000):
        # Ten pulses per message: with ids, or without ids in a message with an AMQP
        # message_id; the two kinds interleaved, so every batch holds both.
        pulses = [
            {
                "tenant": f"t{i % 3}",
                "product_sku": "vm",
                "use_unity": "hour",
                "used_amount": f"{(i + j) % 7}.{(i * j) % 1000:06d}",
                "timestamp": hour.isoformat(),
            }
            for j in range(10)
        ]
        if i % 2:
            bodies.append(body_of([{**pulse, "id": f"k-{i}-{j}"} for j, pulse in enumerate(pulses)]))
        else:
            bodies.append((body_of(pulses), str(uuid.uuid4())))
        for pulse in pulses:
            ledger.add(pulse["tenant"], "vm", "hour", hour, pulse["used_amount"])
    total = sum(count for _, count in ledger.expected().values())

    doomed = WorkerProcess(slow, "raw-doomed", concurrency=1)
    # Started first: a worker busy counting answers no ping until its batch is done.
    doomed.start(producer)
    # Published while we watch Redis, so the kill lands inside the second batch's count.
    publisher = threading.Thread(target=publish_raw, args=(settings.broker_url, bodies))
    publisher.start()
    try:
        deadline = time.monotonic() + 60
        while counted_pulses(redis_client, hour) < batch + 500 and time.monotonic() < deadline:
            time.sleep(0.001)
    finally:
        doomed.stop(signal.SIGKILL)
        publisher.join()
    counted_at_kill = counted_pulses(redis_client, hour)
    deadline = time.monotonic() + 10
    while (counts := queue_counts(RAW))[1] and time.monotonic() < deadline:
        time.sleep(0.1)
    ready, unacked = counts
    assert unacked == 0, "the broker takes back what the dead worker held"
    # Deliveries and cumulative acks follow queue order: what was acked is a prefix.
    acked_pulses = 10 * (len(bodies) - ready)
    assert acked_pulses % batch == 0
    assert 0 < counted_at_kill < total, "the kill must land mid-stream"
    assert acked_pulses <= counted_at_kill, "a message was acked before its pulses were counted"
    assert acked_pulses < counted_at_kill, "the kill must land between a Redis write and its ack"

    # The survivor gets back pulses already counted: they must count nothing again.
    drain_and_persist(WorkerProcess(slow, "raw-survivor", concurrency=1), producer, app)

    assert persisted_sums(database) == ledger.expected()


def test_warm_shutdown_counts_and_acks_the_open_batch(producer, settings, redis_client, database, app):
    # Batches that only a shutdown can close: never full, never old enough.
    lazy = settings_for_tests(raw_batch_size=100_000, raw_batch_wait_ms=3_600_000)
    hour = last_hour()
    # No id, no message_id: the worst case, where only the shutdown's own count-then-
    # ack keeps the sums exact (a message returned after counting would count twice).
    bodies, ledger = anonymous_pulses("term", hour, [f"{i}.{i % 10:06d}" for i in range(300)])

    worker = WorkerProcess(lazy, "raw-term", concurrency=1)
    held = publish_then_sigterm(
        worker,
        producer,
        bodies,
        until=lambda: queue_counts(RAW) == (0, len(bodies)),
        observe=lambda: (queue_counts(RAW), counted_pulses(redis_client, hour)),
    )
    assert held == ((0, len(bodies)), 0), "every message held, uncounted, in the open batch"

    assert queue_counts(RAW) == (0, 0), "the open batch was acked, not returned"
    assert counted_pulses(redis_client, hour) == len(bodies)
    persist(app)
    assert persisted_sums(database) == ledger.expected()


def test_batches_wait_out_a_redis_outage_and_shutdown_returns_them(
    producer, settings, redis_client, database, app
):
    # A worker whose Redis is unreachable (nothing listens on port 1): every attempt
    # fails with a connection error. Its batch must stay unacked, never be acked or
    # dropped, and a warm shutdown must hand it back to the queue.
    cut_off = settings_for_tests(redis_url="redis://127.0.0.1:1/0")
    hour = last_hour()
    bodies, ledger = anonymous_pulses("outage", hour, [f"0.{i + 1:06d}" for i in range(50)])

    stranded = WorkerProcess(cut_off, "raw-outage", concurrency=1)
    held = publish_then_sigterm(
        stranded,
        producer,
        bodies,
        until=lambda: "retry 2 in" in stranded.log.read_text(),
        observe=lambda: queue_counts(RAW),
    )
    assert held == (0, len(bodies)), "held unacked through the retries"
    assert queue_counts(RAW) == (len(bodies), 0), "returned to the queue, not acked"

    drain_and_persist(WorkerProcess(settings, "raw-healthy", concurrency=1), producer, app)
    assert persisted_sums(database) == ledger.expected()
