"""The ingestor on a Redis Cluster the test starts (3 masters, 3 replicas, ports 7101-7106).

A real worker with REDIS_URL naming the cluster counts pulses (ids, duplicates, a
message delivered twice, pulses without id, invalid ones, the raw queue's) and flushes them: PostgreSQL
equals the test's Decimal ledger. A skewed load (one tenant half of the pulses) spreads
over the three masters. With REDIS_WAIT_REPLICAS=1: a batch whose master's replica is
paused (SIGSTOP) is retried, not acked, and counts once after SIGCONT; a master
SIGKILLed mid-load loses nothing and counts nothing twice. About two minutes.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest
from celery import Celery
from flask import Flask
from redis import RedisCluster

from ingestor import create_app
from ingestor.pulses import keys, populate
from ingestor.pulses.pending import begin_usage_snapshot, read_pending_usage
from ingestor.pulses.stats import pending_groups, pending_windows
from ingestor.pulses.task_names import INGEST_PULSES, PERSIST_PULSES
from ingestor.redis_store import RedisSettingsError, check_redis_settings, read_memory
from ingestor.settings import Settings
from tests.support import services
from tests.support.ledger import Ledger, hour_ago, make_pulses, persisted_sums
from tests.support.pulses import pulse
from tests.support.raw import RAW_PULSES, body_of, publish_raw
from tests.support.redis_cluster import PrivateRedisCluster
from tests.support.worker import WorkerProcess, wait_until_idle, wait_until_settled

pytestmark = pytest.mark.usefixtures("clean_state", "clean_cluster")

QUEUES = ("pulses", "persist")


@pytest.fixture(scope="module")
def cluster_settings(settings: Settings, redis_cluster: PrivateRedisCluster) -> Settings:
    return services.settings_for_tests(redis_url=redis_cluster.url)


@pytest.fixture(scope="module")
def cluster_app(cluster_settings: Settings, _services_ready: None) -> Iterator[Flask]:
    """An app on the cluster, in this process (it reads what the worker wrote)."""
    previous = keys.SHARD_TAGS
    app = create_app(cluster_settings)
    yield app
    # The tag count is the process's: the other tests' app is on a single node.
    keys.use_shard_tags(len(previous))


@pytest.fixture(scope="module")
def cluster_worker(
    cluster_settings: Settings, producer: Celery, _services_ready: None, redis_cluster: PrivateRedisCluster
) -> Iterator[WorkerProcess]:
    process = WorkerProcess(cluster_settings, "cluster")
    process.start(producer)
    yield process
    process.stop()


@pytest.fixture
def clean_cluster(redis_cluster: PrivateRedisCluster) -> None:
    redis_cluster.flush()


def send_batch(producer: Celery, pulses: list, task_id: str | None = None) -> None:
    producer.send_task(INGEST_PULSES, args=[pulses], exchange="pulses", routing_key="pulses", task_id=task_id)


def persist_through_worker(producer: Celery, worker: WorkerProcess) -> None:
    wait_until_idle(producer, worker, QUEUES)
    producer.send_task(PERSIST_PULSES, exchange="persist", routing_key="persist")
    wait_until_idle(producer, worker, QUEUES)


def window_counts_per_master(redis_cluster: PrivateRedisCluster) -> dict[int, dict[str, int]]:
    """{master port: {tenant: pulses counted in its live window buckets}}."""
    per_master: dict[int, dict[str, int]] = {}
    for port in redis_cluster.masters():
        node = redis_cluster.client(port)
        tenants: dict[str, int] = {}
        for key in node.scan_iter(match=f"{keys.PREFIX}{{*}}:w:*", count=1000):
            for field, value in node.hscan_iter(key, match=keys.COUNT_FIELD_PREFIX + b"*", count=1000):
                tenant, _, _ = keys.parse_group_field(field[len(keys.COUNT_FIELD_PREFIX) :])
                tenants[tenant] = tenants.get(tenant, 0) + int(value)
        per_master[port] = tenants
    return per_master


def pending_sums(app: Flask, database, hour) -> dict:
    """What a pending read finds in Redis for the two hours from `hour`, in the ledger's shape."""
    first = keys.hour_of(hour)
    with database.session() as session:
        begin_usage_snapshot(session)
        cells = read_pending_usage(
            session, app.extensions["redis"], None, first, first + 2, grace_seconds=300
        )
    sums: dict = {}
    for cell in cells:
        group = (cell.tenant, cell.product_sku, cell.use_unity, keys.hour_start(cell.hour))
        amount, count = sums.get(group, (Decimal(0), 0))
        sums[group] = (amount + Decimal(cell.micro_units) / 10**6, count + cell.pulse_count)
    return sums


def test_settings_and_memory_are_read_on_every_node(
    cluster_app: Flask, redis_cluster: PrivateRedisCluster
) -> None:
    client = cluster_app.extensions["redis"]
    check_redis_settings(client)
    replica = redis_cluster.replicas()[-1]
    redis_cluster.client(replica).config_set("maxmemory-policy", "allkeys-lru")
    try:
        # A replica is a master after a failover: it is checked too.
        with pytest.raises(RedisSettingsError, match="allkeys-lru"):
            check_redis_settings(client)
    finally:
        redis_cluster.client(replica).config_set("maxmemory-policy", "noeviction")
    # The memory warning and /ready read the master nearest its maxmemory.
    master = redis_cluster.masters()[-1]
    limit = int(redis_cluster.client(master).info("memory")["used_memory"]) + 64 * 2**20
    redis_cluster.client(master).config_set("maxmemory", limit)
    try:
        assert read_memory(client).maxmemory_bytes == limit
    finally:
        redis_cluster.client(master).config_set("maxmemory", 0)


def test_login_attempts_are_limited_on_the_cluster(
    cluster_settings: Settings, cluster_app: Flask, user
) -> None:
    """The login limits (the limits library's own RedisCluster, from the same URL)."""
    limited = create_app(replace(cluster_settings, login_rate_limit_per_username="2/minute"))
    statuses = [
        limited.test_client().post("/api/v1/login", json={"username": user, "password": "wrong"}).status_code
        for _ in range(3)
    ]
    assert statuses == [401, 401, 429]
    # Counted in the cluster, not in the single Redis of the other tests.
    assert any(redis_cluster_keys(limited, "LIMITS*"))


def redis_cluster_keys(app: Flask, pattern: str) -> list[bytes]:
    return list(app.extensions["redis"].scan_iter(match=pattern, target_nodes=RedisCluster.PRIMARIES))


def test_a_populate_job_is_recorded_on_the_cluster(cluster_app: Flask) -> None:
    """The populate endpoint's job record (a MULTI of one key)."""
    client = cluster_app.extensions["redis"]
    job_id = populate.create_job(client, total=10, workers=2, buffer_size=5)
    progress = populate.job_progress(client, job_id)
    assert progress is not None and progress.total == 10


def test_the_cluster_client_and_its_tags(cluster_app: Flask, redis_cluster: PrivateRedisCluster) -> None:
    assert isinstance(cluster_app.extensions["redis"], RedisCluster)
    assert len(keys.SHARD_TAGS) == keys.CLUSTER_SHARD_TAG_COUNT
    # Every master holds some of the tags' slots.
    client = cluster_app.extensions["redis"]
    owners = {client.get_node_from_key(keys.registry_key(tag)).port for tag in keys.SHARD_TAGS}
    assert owners == set(redis_cluster.masters())


def test_sums_are_exact_on_the_cluster(
    cluster_settings: Settings,
    cluster_app: Flask,
    cluster_worker: WorkerProcess,
    producer: Celery,
    database,
    redis_cluster,
) -> None:
    ledger = Ledger()
    hour = hour_ago(2)
    with_ids = make_pulses(ledger, 600, prefix="c", hour=hour, tenants=7)
    for start in range(0, len(with_ids), 100):
        send_batch(producer, with_ids[start : start + 100])
    # The same ids again, in other batches: counted once.
    send_batch(producer, with_ids[:250])
    # Pulses without id, in one message delivered twice (same task id): counted once.
    without_ids = make_pulses(ledger, 300, prefix="n", hour=hour + timedelta(hours=1), with_ids=False)
    task_id = str(uuid.uuid4())
    send_batch(producer, without_ids, task_id=task_id)
    send_batch(producer, without_ids, task_id=task_id)
    # A message of one pulse without id (the id index), twice; and an invalid pulse.
    alone = pulse(tenant="alone", product_sku="vm", use_unity="hour", used_amount="0.000001", timestamp=hour)
    ledger.add("alone", "vm", "hour", hour, "0.000001")
    lone_id = str(uuid.uuid4())
    send_batch(producer, [alone], task_id=lone_id)
    send_batch(producer, [alone], task_id=lone_id)
    send_batch(producer, [pulse(used_amount="-1", timestamp=hour)])
    # The raw queue: bare pulses with ids, and an array without ids published twice
    # under one AMQP message_id (counted once).
    raw = make_pulses(ledger, 100, prefix="r", hour=hour, tenants=3)
    raw_array = make_pulses(ledger, 50, prefix="ra", hour=hour, tenants=3, with_ids=False)
    bodies = [body_of(one) for one in raw] + [(body_of(raw_array), "raw-array")] * 2
    publish_raw(cluster_settings.broker_url, bodies)
    wait_until_idle(producer, cluster_worker, QUEUES)
    wait_until_settled(cluster_worker, RAW_PULSES)

    # Before the flush, every master holds windows, and the pending read (every tag)
    # and the metrics' registry read find them all.
    assert all(window_counts_per_master(redis_cluster).values())
    assert pending_sums(cluster_app, database, hour) == ledger.expected()
    pending = pending_windows(cluster_app.extensions["redis"])
    assert len(pending.windows) == 2 * keys.CLUSTER_SHARD_TAG_COUNT
    # `flask pulses stats`: the groups held, over every master.
    assert pending_groups(cluster_app.extensions["redis"], pending.hash_keys()) == len(ledger.expected())
    persist_through_worker(producer, cluster_worker)

    assert persisted_sums(database) == ledger.expected()
    assert pending_sums(cluster_app, database, hour) == {}
    assert not window_counts_per_master(redis_cluster)[redis_cluster.masters()[0]]


def test_a_hot_tenant_spreads_over_every_master(
    cluster_app: Flask, cluster_worker: WorkerProcess, producer: Celery, database, redis_cluster
) -> None:
    rng = random.Random(16)
    hour = hour_ago(1)
    ledger = Ledger()
    pulses = []
    for i in range(3000):
        # Half of the pulses are one tenant's; the rest spread over 50 others.
        tenant = "hot" if i % 2 == 0 else f"cold-{rng.randrange(50)}"
        pulses.append(pulse(id=f"s-{i}", tenant=tenant, used_amount="1", timestamp=hour))
        ledger.add(tenant, "vm.small", "vCPU-hour", hour, "1")
    for start in range(0, len(pulses), 500):
        send_batch(producer, pulses[start : start + 500])
    wait_until_idle(producer, cluster_worker, QUEUES)

    per_master = window_counts_per_master(redis_cluster)
    third = len(pulses) / 3
    totals = {port: sum(tenants.values()) for port, tenants in per_master.items()}
    hot = {port: tenants.get("hot", 0) for port, tenants in per_master.items()}
    assert sum(totals.values()) == len(pulses)
    # Within ±25% of a third on every master, and so is the hot tenant alone.
    assert all(0.75 * third <= total <= 1.25 * third for total in totals.values()), totals
    assert all(0.75 * third / 2 <= count <= 1.25 * third / 2 for count in hot.values()), hot
    persist_through_worker(producer, cluster_worker)
    assert persisted_sums(database) == ledger.expected()


@pytest.fixture
def waiting_worker(
    cluster_settings: Settings,
    producer: Celery,
    cluster_worker: WorkerProcess,
    redis_cluster: PrivateRedisCluster,
) -> Iterator[WorkerProcess]:
    """A worker waiting for one replica after each batch, retrying quickly (the shared
    cluster worker stopped meanwhile, so this one takes every task)."""
    cluster_worker.stop()
    settings = services.settings_for_tests(
        redis_url=redis_cluster.url,
        redis_wait_replicas=1,
        redis_wait_timeout_ms=300,
        task_retry_backoff_max_seconds=2,
        task_max_retries=100,
    )
    process = WorkerProcess(settings, "cluster-wait")
    process.start(producer)
    yield process
    process.stop()
    cluster_worker.start(producer)


def holds_tasks(producer: Celery, worker: WorkerProcess) -> bool:
    """Whether the worker holds a task (running, reserved or waiting for its retry)."""
    inspect = producer.control.inspect(destination=[worker.name], timeout=2)
    return any(
        tasks
        for reply in (inspect.active(), inspect.reserved(), inspect.scheduled())
        if reply
        for tasks in reply.values()
    )


def test_a_write_no_replica_confirmed_is_retried_not_acked(
    cluster_app: Flask, waiting_worker: WorkerProcess, producer: Celery, database, redis_cluster
) -> None:
    ledger = Ledger()
    pulses = make_pulses(ledger, 400, prefix="w", hour=hour_ago(1), tenants=5)
    replica = redis_cluster.replica_of(redis_cluster.masters()[0])
    redis_cluster.pause(replica)
    try:
        send_batch(producer, pulses)
        time.sleep(4)
        # Its master's part could not be confirmed: the task waits for a retry.
        assert holds_tasks(producer, waiting_worker), waiting_worker.tail()
        assert "ReplicaWaitTimeout" in waiting_worker.log.read_text()
    finally:
        redis_cluster.resume(replica)
    persist_through_worker(producer, waiting_worker)
    assert persisted_sums(database) == ledger.expected()


def test_a_master_killed_mid_load_loses_nothing_and_counts_nothing_twice(
    cluster_app: Flask, waiting_worker: WorkerProcess, producer: Celery, database, redis_cluster
) -> None:
    ledger = Ledger()
    hour = hour_ago(1)
    batches = [make_pulses(ledger, 100, prefix=f"k{b}", hour=hour, tenants=4) for b in range(40)]
    victim = redis_cluster.masters()[1]
    successor = redis_cluster.replica_of(victim)

    def publish() -> None:
        for batch in batches:
            send_batch(producer, batch)
            time.sleep(0.05)

    publisher = threading.Thread(target=publish)
    publisher.start()
    time.sleep(0.8)  # some batches counted, more on their way
    redis_cluster.kill(victim)
    try:
        # Its replica takes over its slots; until the victim is back as the new
        # master's replica, no write there can be confirmed: those batches retry.
        deadline = time.monotonic() + 30
        while redis_cluster.role(successor) != "master" or not redis_cluster.healthy():
            assert time.monotonic() < deadline, redis_cluster.log_tail(successor)
            time.sleep(0.2)
        publisher.join()
        time.sleep(2)
        assert holds_tasks(producer, waiting_worker)
    finally:
        redis_cluster.restart(victim)
    assert redis_cluster.role(victim) == "slave"
    wait_until_idle(producer, waiting_worker, QUEUES, timeout=120)
    persist_through_worker(producer, waiting_worker)
    assert persisted_sums(database) == ledger.expected()
