"""A full Redis (maxmemory reached, `noeviction`): loud, patient, recoverable without a replay.

A private `redis-server` with a small maxmemory, a real worker filling it through the
Celery task and the raw queue. While it is full: the worker warned first (headroom
below REDIS_MEMORY_WARN_PERCENT), logs an ERROR naming the condition for each refused
batch, counts the refusals, `/ready` says `redis: out of memory`, and nothing is
dead-lettered, even for batches refused many more times than TASK_MAX_RETRIES. Once
an operator raises maxmemory, ingestion resumes by itself and the sums match the
ledger exactly.
"""

from __future__ import annotations

import re
import time
import urllib.request

import pytest
from redis import Redis
from redis.exceptions import OutOfMemoryError

from ingestor import create_app
from ingestor.messaging.topology import PERSIST, PULSES, RAW_PULSES
from ingestor.pulses import keys
from ingestor.pulses.persistence import Persister
from ingestor.pulses.task_names import INGEST_PULSES, PERSIST_PULSES
from tests.support.api import PASSWORD
from tests.support.faults import TASK_QUEUES, wait_for
from tests.support.ledger import Ledger, hour_ago, make_pulses, persisted_sums
from tests.support.private_redis import PrivateRedis
from tests.support.procfile import free_port
from tests.support.raw import body_of, publish_raw
from tests.support.services import settings_for_tests
from tests.support.worker import WorkerProcess, queue_counts, queue_depth, wait_until_idle, wait_until_settled

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("clean_state")]

MAX_RETRIES = 2
REFUSED_LINE = "Redis is out of memory"
WARNED_LINE = "Redis memory is running low"


def scrape(port: int) -> dict[str, float]:
    """The worker's metrics, as {"name{labels}": value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        name: float(value)
        for name, value in (
            line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
        )
    }


def most_refusals_of_one_task(worker: WorkerProcess) -> int:
    refusals = re.findall(r"\(refusal (\d+), retries left unspent\)", worker.log.read_text(errors="replace"))
    return max(map(int, refusals), default=0)


def test_a_full_redis_holds_every_batch_loudly_and_resumes_by_itself_when_memory_is_added(producer, database):
    hour = hour_ago(1)
    ledger = Ledger()
    with PrivateRedis() as private:
        client = Redis.from_url(private.url)
        settings = settings_for_tests(
            redis_url=private.url,
            task_max_retries=MAX_RETRIES,
            task_retry_backoff_max_seconds=1,
            redis_memory_warn_percent=80,
            redis_memory_check_seconds=1,
            raw_batch_size=50,
        )
        metrics_port = free_port()
        worker = WorkerProcess(
            settings,
            "redis-full",
            concurrency=2,
            extra_env={"METRICS_PORT": str(metrics_port), "METRICS_HOST": "127.0.0.1"},
        )
        worker.start(producer)
        # Room for a first small batch, with Redis already past the warning level.
        client.config_set("maxmemory", int(client.info("memory")["used_memory"] / 0.85))
        try:
            first = make_pulses(ledger, 100, prefix="first", hour=hour)
            producer.send_task(INGEST_PULSES, args=[first], exchange=PULSES, routing_key=PULSES)
            wait_until_idle(producer, worker, TASK_QUEUES)
            assert WARNED_LINE in worker.log.read_text(), "warned before the first refusal"
            assert REFUSED_LINE not in worker.log.read_text()

            # Fill it: the room taken (a batch's own arguments count in Redis's memory while
            # its script runs, so a large batch can be refused while a small one still fits,
            # and memory used falls back once they are gone), then far more pulses than there
            # is room for.
            client.config_set("maxmemory", int(client.info("memory")["used_memory"] * 0.9))
            for n in range(8):
                batch = make_pulses(ledger, 1000, prefix=f"fill-{n}", hour=hour)
                producer.send_task(INGEST_PULSES, args=[batch], exchange=PULSES, routing_key=PULSES)
            raw = [body_of(pulse) for pulse in make_pulses(ledger, 200, prefix="raw", hour=hour)]
            publish_raw(settings.broker_url, raw)
            # The hourly flush comes while Redis is full: refused too (its lock is a write).
            producer.send_task(PERSIST_PULSES, exchange=PERSIST, routing_key=PERSIST)

            # Patient: batches refused several times over their retry budget, none dead.
            def dead() -> int:
                return queue_depth(settings.broker_url, "pulses.dead")

            wait_for(
                lambda: most_refusals_of_one_task(worker) > MAX_RETRIES + 2 or dead(),
                timeout=60,
                what=f"a batch refused more than {MAX_RETRIES + 2} times",
            )
            assert dead() == 0, f"{dead()} message(s) dead-lettered while Redis was full"
            wait_for(lambda: queue_counts(RAW_PULSES)[1] > 0, what="raw messages held unacked")
            log = worker.log.read_text(errors="replace")
            refused = [line for line in log.splitlines() if REFUSED_LINE in line]
            assert any("ERROR" in line and "maxmemory" in line and "add memory" in line for line in refused)
            assert any("raw batch" in line for line in refused), "the raw consumer holds its batch too"
            assert any("ingestor.persist_pulses refused" in line for line in refused), "the flush waits too"

            # Loud: the metrics and /ready.
            metrics = scrape(metrics_port)
            assert (
                metrics['ingestor_redis_memory_refusals_total{source="ingestor.ingest_pulses"}'] > MAX_RETRIES
            )
            assert metrics['ingestor_redis_memory_refusals_total{source="raw"}'] >= 1
            # Each refusal ended its run as a retry: held, then sent again (multiprocess
            # mode writes the labels sorted by name).
            assert metrics[f'ingestor_tasks_total{{outcome="retry",task="{INGEST_PULSES}"}}'] > MAX_RETRIES
            assert metrics["ingestor_redis_memory_headroom_ratio"] <= 0
            assert metrics["ingestor_redis_memory_low"] == 1
            assert metrics["ingestor_redis_maxmemory_bytes"] == int(
                client.config_get("maxmemory")["maxmemory"]
            )
            web = create_app(settings).test_client()
            ready = web.get("/ready")
            assert ready.status_code == 503
            body = ready.get_json()
            assert body["services"]["redis"] == "out of memory"
            assert body["error"]["details"]["services"] == ["redis"]
            assert "Redis out of memory" in body["error"]["message"]

            # A warm shutdown while batches are held: prompt, and they go back to the queue.
            stopping = time.monotonic()
            assert worker.stop() == 0
            assert time.monotonic() - stopping < 15
            worker = WorkerProcess(settings, "redis-full-2", concurrency=2)
            worker.start(producer)

            # Recoverable: the operator adds memory; nothing to replay.
            client.config_set("maxmemory", 0)
            wait_until_idle(producer, worker, TASK_QUEUES, timeout=120)
            wait_until_settled(worker, RAW_PULSES)
            assert web.get("/ready").status_code == 200
            assert "flush finished" in worker.log.read_text(), "the held flush ran once Redis had room"
        finally:
            worker.stop()
        assert queue_depth(settings.broker_url, "pulses.dead") == 0
        Persister(client, database).persist_pending()
        client.close()

    assert persisted_sums(database) == ledger.expected()


class FullAfterTheLock(Redis):
    """The real test Redis, but filling up right after the flush took its lock."""

    def incr(self, name, amount=1):  # redis-py's signature
        raise OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")


def test_a_flush_refused_for_memory_after_taking_its_lock_releases_it(settings, database, redis_client):
    # The lock is the flush's first write, the usage-version bump its second: if Redis
    # fills up in between, the retry must not wait a whole lock timeout for a dead lock.
    full = FullAfterTheLock.from_url(settings.redis_url)
    with pytest.raises(OutOfMemoryError):
        Persister(full, database).persist_pending()
    full.close()

    assert not redis_client.lock(keys.FLUSH_LOCK).locked()


def test_the_api_answers_a_full_redis_with_a_503_naming_it_never_a_500(user, auth):
    # Login counts its attempts in Redis and populate records its job there: both are
    # writes a full Redis refuses. The request changed nothing and a retry succeeds
    # once memory is added, as after an outage.
    with PrivateRedis() as private:
        client = Redis.from_url(private.url)
        web = create_app(settings_for_tests(redis_url=private.url)).test_client()
        client.config_set("maxmemory", 1)  # below what it uses: every write refused
        try:
            login = web.post("/api/v1/login", json={"username": user, "password": PASSWORD})
            populate = web.post("/api/v1/pulses/populate", json={}, headers=auth)
        finally:
            client.config_set("maxmemory", 0)
            client.close()

    for response in (login, populate):
        assert response.status_code == 503, response.get_json()
        assert response.headers.get("Retry-After", "").isdigit()
        error = response.get_json()["error"]
        assert error["code"] == "service_unavailable" and error["details"] == {"service": "redis"}
        assert "Redis is unavailable" in error["message"] and "out of memory" in error["message"], error
