"""Guarantees 1, 2 and 6 through Redis outages, with a real worker.

- Redis unreachable in the middle of a batch (through a proxy the test cuts): the
  chunks already applied stay applied, the task fails on the transient error and
  retries with backoff; when Redis is back the retry runs the whole batch again and
  the dedupe keys make every pulse count once.
- Redis (a private `redis-server` with the append-only file on, as deployed) killed
  with SIGKILL mid-load and restarted: the counted pulses and their dedupe keys come
  back from the AOF, the tasks that failed meanwhile retry, the sums are exact.
- Redis unreachable for good: a batch out of retries is dead-lettered whole, never
  acked away.
"""

from __future__ import annotations

import threading
import time

import pytest
from redis import Redis
from redis.exceptions import RedisError

from ingestor.messaging.serialization import loads_decimal
from ingestor.messaging.topology import PULSES
from ingestor.pulses.persistence import Persister
from ingestor.pulses.task_names import INGEST_PULSES
from tests.support.faults import TASK_QUEUES, counted_pulses, proxied, retries_logged, wait_for
from tests.support.ledger import Ledger, hour_ago, make_pulses, persisted_sums
from tests.support.private_redis import PrivateRedis
from tests.support.raw import dead_letters
from tests.support.services import settings_for_tests
from tests.support.worker import WorkerProcess, queue_depth, wait_until_idle

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("clean_state")]


def send_batch(producer, pulses: list[dict]) -> None:
    producer.send_task(INGEST_PULSES, args=[pulses], exchange=PULSES, routing_key=PULSES)


def test_redis_cut_mid_batch_retries_with_backoff_and_counts_once(
    producer, app, settings, database, redis_client
):
    hour = hour_ago(1)
    ledger = Ledger()
    # Without ids: deduplicated by (task id, index), which the retries keep.
    big = make_pulses(ledger, 20_000, prefix="big", hour=hour, with_ids=False)
    # Tiny Lua chunks: the batch takes long enough for the cut to land inside it.
    with proxied(settings, redis_chunk_size=5, task_retry_backoff_max_seconds=2) as proxies:
        worker = WorkerProcess(proxies.settings, "redis-cut", concurrency=1)
        worker.start(producer)
        try:
            send_batch(producer, big)
            wait_for(lambda: counted_pulses(redis_client, hour) > 1000, what="the batch half counted")
            with proxies.redis.outage():
                counted_at_cut = counted_pulses(redis_client, hour)
                # Batches sent during the outage fail and retry too.
                for n in range(5):
                    send_batch(producer, make_pulses(ledger, 100, prefix=f"during-{n}", hour=hour))
                wait_for(lambda: retries_logged(worker) >= 3, what="three retries during the outage")
            wait_until_idle(producer, worker, TASK_QUEUES)
        finally:
            worker.stop()
    app.extensions["pulses"].persister.persist_pending()

    assert 0 < counted_at_cut < len(big), "the cut must land in the middle of the batch"
    assert persisted_sums(database) == ledger.expected()


def test_redis_killed_and_restarted_with_aof_mid_load_loses_nothing(producer, database):
    hour = hour_ago(1)
    ledger = Ledger()
    batches = [make_pulses(ledger, 500, prefix=f"aof-{n}", hour=hour) for n in range(30)]
    total = sum(len(batch) for batch in batches)
    with PrivateRedis() as private:
        settings = settings_for_tests(
            redis_url=private.url, redis_chunk_size=50, task_retry_backoff_max_seconds=2
        )
        client = Redis.from_url(private.url)

        def counted() -> int:
            try:
                return counted_pulses(client, hour)
            except RedisError:
                return 0

        worker = WorkerProcess(settings, "redis-aof", concurrency=2)
        worker.start(producer)
        publisher = threading.Thread(target=lambda: [send_batch(producer, batch) for batch in batches])
        try:
            publisher.start()
            wait_for(lambda: counted() > total // 4, what="a quarter of the load counted")
            private.kill()
            time.sleep(0.5)  # tasks meet the dead Redis and schedule their retries
            private.start()
            counted_after_restart = counted()  # what the AOF gave back
            publisher.join(timeout=60)
            wait_until_idle(producer, worker, TASK_QUEUES, timeout=120)
        finally:
            publisher.join(timeout=60)
            worker.stop()
        Persister(client, database).persist_pending()
        client.close()

    assert 0 < counted_after_restart < total, "the restart must land in the middle of the load"
    assert retries_logged(worker) > 0, "some tasks met the dead Redis"
    assert persisted_sums(database) == ledger.expected()


def test_a_batch_failing_past_its_retries_is_dead_lettered_whole_never_acked_away(
    producer, settings, database
):
    # Redis unreachable for good (nothing listens on port 1), two retries allowed: the
    # task gives up. Acked away, its pulses would be lost; it must land in
    # pulses.dead, intact, so that an operator can replay it once Redis is back.
    hopeless = settings_for_tests(
        redis_url="redis://127.0.0.1:1/0", task_max_retries=2, task_retry_backoff_max_seconds=1
    )
    ledger = Ledger()
    pulses = make_pulses(ledger, 10, prefix="stranded", hour=hour_ago(1))
    task_id = producer.send_task(INGEST_PULSES, args=[pulses], exchange="pulses", routing_key="pulses").id

    worker = WorkerProcess(hopeless, "hopeless", concurrency=1)
    worker.start(producer)
    try:
        wait_for(
            lambda: queue_depth(settings.broker_url, "pulses.dead") == 1, timeout=60, what="a dead letter"
        )
        wait_until_idle(producer, worker, ("pulses",))
    finally:
        worker.stop()

    [dead] = dead_letters(settings.broker_url)
    args, _kwargs, _embed = loads_decimal(dead)
    assert args == [pulses]
    assert retries_logged(worker) == 2
    assert task_id in worker.log.read_text()
    assert persisted_sums(database) == {}
