"""A bounded chaos soak: three kinds of producers, a worker killed and cut off at random.

For `SOAK_SECONDS` (default 30; the whole test stays well under 90 s on a 2-core
machine; longer on a loaded one, until every kind of chaos has happened once and
5,000 pulses went through), three producers publish pulses at once:

- Celery `send_task` batches (another service with nothing but Celery), straight to
  RabbitMQ;
- `POST /api/v1/pulses` through the API, whose RabbitMQ connection goes through a
  proxy (a 503 is retried, as the README tells clients to);
- bare JSON bodies to the raw queue (the first version's producers).

Meanwhile a chaos loop (seeded by `SOAK_SEED`, so a failure replays) SIGKILLs the
worker and restarts it, and cuts its connections to Redis, PostgreSQL and RabbitMQ
(and so the API's), while beat-like persist tasks fire. At the end, after a final
persist, every (tenant, sku, unit, hour) sum in PostgreSQL equals the test's Decimal
ledger to the micro-unit, and the rejected-pulses table holds exactly the invalid
pulses that were sent to the worker (the API answers its own per index).

Every valid pulse carries an `id`. That is deliberate: a pulse without one is
documented as countable twice when a producer publishes it again after an unanswered
publish (a 503 whose message did land) or, on the raw queue without a message_id,
when a worker dies between the Redis write and the ack. The soak proves the
guarantees producers get by following the README, not that documented limit.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable

import pytest
from celery import Celery
from sqlalchemy import text

from ingestor import create_app
from ingestor.messaging.topology import PERSIST, PULSES, RAW_PULSES
from ingestor.pulses.raw_consumer import rejection_id_of
from ingestor.pulses.task_names import INGEST_PULSES, PERSIST_PULSES
from tests.support.api import post_until_accepted
from tests.support.faults import TASK_QUEUES, proxied
from tests.support.ledger import Ledger, hour_ago, make_pulses, persisted_sums
from tests.support.pulses import MISSING, pulse
from tests.support.raw import body_of, publish_raw
from tests.support.worker import WorkerProcess, wait_until_idle, wait_until_settled

pytestmark = [pytest.mark.soak, pytest.mark.faults, pytest.mark.usefixtures("clean_state")]

logger = logging.getLogger(__name__)

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "30"))
SOAK_SEED = int(os.environ.get("SOAK_SEED", "20261128"))
CHAOS_TO_COVER = ["kill", "redis", "database", "broker"]
CHAOS_ACTIONS = [*CHAOS_TO_COVER, "persist", "persist"]
MIN_PULSES = 5_000

# One of these is slipped into some batches: each breaks exactly one rule.
INVALID = [
    pulse(tenant="bad", used_amount="-1"),
    pulse(tenant="bad", used_amount="0.0000001"),
    pulse(tenant="bad\x00nul"),
    pulse(tenant=MISSING),
    pulse(tenant="bad", timestamp="yesterday"),
    "not a pulse",
]


class Soak:
    """The shared state of the producers: the ledger, and the rejections they expect."""

    def __init__(self, seconds: float) -> None:
        # Chaos actions still to be drawn at least once: a loaded machine draws fewer
        # steps in the same seconds, so the soak runs on (up to `cutoff`) until each of
        # them has happened and enough pulses went through, instead of failing its own
        # coverage check.
        self.uncovered = list(CHAOS_TO_COVER)
        self.ledger = Ledger()
        self.lock = threading.Lock()
        self.expected_rejections: set[tuple[str, int]] = set()
        self.sent = {"celery": 0, "http": 0, "raw": 0}
        self.stop = threading.Event()
        self.deadline = time.monotonic() + seconds
        self.cutoff = self.deadline + 2 * seconds + 60
        self.errors: list[BaseException] = []

    def finished(self) -> bool:
        """Past the deadline with every chaos action drawn and enough pulses sent, or past the cutoff."""
        now = time.monotonic()
        if now >= self.cutoff:
            return True
        if now < self.deadline or self.uncovered:
            return False
        with self.lock:
            return sum(count for _, count in self.ledger.expected().values()) > MIN_PULSES

    def chaos_action(self, rng: random.Random) -> str:
        """The next chaos action: each of CHAOS_TO_COVER once (in a seeded order), then at random."""
        if self.uncovered:
            return self.uncovered.pop(rng.randrange(len(self.uncovered)))
        return rng.choice(CHAOS_ACTIONS)

    def pulses(self, kind: str, n: int, rng: random.Random) -> tuple[list, list[int]]:
        """`n` valid pulses in the ledger (ids unique in the soak), sometimes one invalid
        pulse inserted; the batch and the positions of its invalid pulses."""
        with self.lock:
            prefix = f"{kind}-{self.sent[kind]}"
            self.sent[kind] += 1
            batch: list = make_pulses(
                self.ledger, n, prefix=prefix, hour=hour_ago(rng.randint(1, 4)), tenants=5
            )
        invalid: list[int] = []
        if rng.random() < 0.2:
            position = rng.randint(0, len(batch))
            batch.insert(position, rng.choice(INVALID))
            invalid.append(position)
        return batch, invalid

    def expect_rejected(self, message_id: str, positions: list[int]) -> None:
        with self.lock:
            self.expected_rejections.update((message_id, p) for p in positions)

    def run(self, name: str, step: Callable[[random.Random], None], seed: int) -> threading.Thread:
        """A thread calling `step` until the deadline or until stopped; errors are kept."""
        rng = random.Random(seed)

        def loop() -> None:
            try:
                while not self.stop.is_set() and not self.finished():
                    step(rng)
            except BaseException as exc:  # reported by the test
                self.errors.append(exc)
                self.stop.set()

        thread = threading.Thread(target=loop, name=name)
        thread.start()
        return thread


def test_soak_under_chaos_sums_exactly_and_quarantines_exactly(settings, producer, app, auth, database):
    soak = Soak(SOAK_SECONDS)
    statuses: list[int] = []
    with proxied(settings, task_retry_backoff_max_seconds=2) as proxies:
        api = create_app(proxies.settings).test_client()
        # The chaos loop's own Celery app: pings and persist tasks from its thread.
        control = Celery("chaos", broker=settings.broker_url, set_as_current=False)
        worker_box = [WorkerProcess(proxies.settings, "soak-0")]
        worker_box[0].start(control)

        def celery_step(rng: random.Random) -> None:
            batch, invalid = soak.pulses("celery", 100, rng)
            task_id = str(uuid.uuid4())
            producer.send_task(
                INGEST_PULSES, args=[batch], exchange=PULSES, routing_key=PULSES, task_id=task_id
            )
            soak.expect_rejected(task_id, invalid)
            time.sleep(0.1)

        def http_step(rng: random.Random) -> None:
            batch, invalid = soak.pulses("http", 50, rng)
            answer = post_until_accepted(api, auth, batch, statuses)
            assert [r["index"] for r in answer["rejected"]] == invalid
            time.sleep(0.05)

        def raw_step(rng: random.Random) -> None:
            bodies: list[tuple[bytes, str]] = []
            for _ in range(10):
                batch, invalid = soak.pulses("raw", 10, rng)
                body = body_of(batch)
                # A message_id makes a redelivered message's rejections the same rows;
                # without one, each delivery records its own (the README's limit).
                message_id = str(uuid.UUID(int=rng.getrandbits(128)))
                bodies.append((body, message_id))
                soak.expect_rejected(rejection_id_of(body, message_id), invalid)
            publish_raw(settings.broker_url, bodies)
            time.sleep(0.2)

        chaos_log: list[str] = []

        def chaos_step(rng: random.Random) -> None:
            time.sleep(rng.uniform(0.5, 2.0))
            action = soak.chaos_action(rng)
            chaos_log.append(action)
            if action == "kill":
                worker_box[0].stop(signal.SIGKILL)
                worker_box[0] = WorkerProcess(proxies.settings, f"soak-{len(chaos_log)}")
                worker_box[0].start(control)
            elif action == "persist":
                control.send_task(PERSIST_PULSES, exchange=PERSIST, routing_key=PERSIST)
            else:
                with getattr(proxies, action).outage():
                    time.sleep(rng.uniform(0.2, 1.5))

        threads = [
            soak.run("celery", celery_step, SOAK_SEED + 1),
            soak.run("http", http_step, SOAK_SEED + 2),
            soak.run("raw", raw_step, SOAK_SEED + 3),
            soak.run("chaos", chaos_step, SOAK_SEED),
        ]
        try:
            for thread in threads:
                thread.join(timeout=soak.cutoff - time.monotonic() + 120)
            assert not soak.errors, soak.errors
            for proxy in proxies.all():
                proxy.restore()
            worker = worker_box[0]
            wait_until_idle(control, worker, TASK_QUEUES, timeout=120)
            wait_until_settled(worker, RAW_PULSES, timeout=120)
            wait_until_idle(control, worker, TASK_QUEUES, timeout=120)
        finally:
            soak.stop.set()
            for thread in threads:
                thread.join(timeout=30)
            worker_box[0].stop()
            control.close()
    # A persist killed by the chaos leaves its lock to expire: wait it out.
    app.extensions["pulses"].persister.persist_pending(wait_seconds=90)

    total = sum(count for _, count in soak.ledger.expected().values())
    logger.info(
        "soak: %d pulses, batches %s, chaos %s, HTTP statuses %s",
        total,
        soak.sent,
        chaos_log,
        {status: statuses.count(status) for status in set(statuses)},
    )
    assert total > MIN_PULSES and set(CHAOS_TO_COVER) <= set(chaos_log), (total, chaos_log)
    assert persisted_sums(database) == soak.ledger.expected()
    with database.engine.connect() as connection:
        rows = connection.execute(text("SELECT message_id, position FROM rejected_pulse"))
        rejected = {(message_id, position) for message_id, position in rows}
    assert rejected == soak.expected_rejections
