"""BROKER_QUEUE_TYPE=quorum on a real 3-node RabbitMQ cluster, one node SIGKILLed.

A private cluster (tests/support/rabbit_cluster.py) and BROKER_URL listing its three
nodes, first the one leading the `pulses` queue: the API, the worker and its populate
tasks all connect there. That node is killed while clients POST pulses and a populate
job publishes its batches. The API answers 202 or 503 (a client retries a 503), its
publishers and the worker move to the next node listed, the queues elect a new leader
among the two left, and every pulse is counted exactly once: a pulse lost (confirmed,
then gone with the node) or counted twice (a redelivery, a republish) changes a sum.
The raw queue, classic, waits on the killed node: restarted, the worker consumes it again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from celery import Celery
from kombu import Connection

from ingestor import create_app
from ingestor.messaging import topology
from ingestor.pulses.fake import fake_pulses
from ingestor.pulses.populate import split_evenly
from tests.support import services
from tests.support.api import post_until_accepted
from tests.support.faults import persist_through_worker, wait_for
from tests.support.ledger import Ledger, hour_ago, make_pulses, persisted_sums, persisted_sums_per_group
from tests.support.rabbit_cluster import Node, RabbitCluster, rabbitmq_server
from tests.support.raw import body_of, publish_raw
from tests.support.worker import WorkerProcess

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("clean_state")]

VHOST = services.RABBITMQ_VHOST
HTTP_BATCHES = 40
HTTP_BATCH_SIZE = 25
# Batches accepted before the kill: the stream is well under way, most of it to come.
KILL_AFTER_BATCHES = 8
RAW_PULSES = 500
POPULATE_JOB = {"total_messages": 3000, "workers_number": 2, "buffer_size": 25}


@pytest.fixture(scope="module")
def cluster(_services_ready: None) -> Iterator[RabbitCluster]:
    if rabbitmq_server() is None:
        pytest.skip("rabbitmq-server is not installed")
    with RabbitCluster() as cluster:
        cluster.add_vhost(VHOST)
        yield cluster


def populate_ledger(ledger: Ledger, job_id: str) -> None:
    """Write in `ledger` the pulses populate job `job_id` publishes (they are seeded by it)."""
    job = POPULATE_JOB
    shares = split_evenly(job["total_messages"], job["workers_number"])
    for worker_index, count in enumerate(shares):
        for pulse in fake_pulses(job_id, worker_index, 0, count):
            # Their hour is when they were made: the check compares sums whatever the hour.
            ledger.add(
                pulse["tenant"], pulse["product_sku"], pulse["use_unity"], hour_ago(0), pulse["used_amount"]
            )


def raw_queue_settled(cluster: RabbitCluster, asking: Node) -> bool:
    """Whether the raw queue holds nothing ready and nothing unacked (counted and acked)."""
    rows = services.rabbitmqctl_rows(
        "list_queues",
        VHOST,
        "name",
        "messages_ready",
        "messages_unacknowledged",
        options=cluster.ctl_options(asking),
    )
    return [topology.RAW_PULSES, "0", "0"] in rows


def control_reaching(worker: WorkerProcess, broker_url: str, timeout: float = 120) -> Celery:
    """A new control app once `worker` answers its ping through the nodes left.

    The worker reconnected; and the first connection a client opens right after the
    node's death may be reset by a surviving node while the cluster settles.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        control = services.external_producer(broker_url)
        try:
            if control.control.ping(destination=[worker.name], timeout=2):
                return control
        except ConnectionError:
            pass
        control.close()
    raise TimeoutError(f"the worker answered no ping in {timeout}s:\n{worker.tail()}")


def test_the_pulses_leader_killed_mid_stream_loses_nothing_and_counts_nothing_twice(cluster, auth, database):
    started = time.monotonic()
    first = cluster.nodes[0]
    with Connection(first.url(VHOST)) as connection:
        # Declared through the first node, so it leads them (RabbitMQ's client-local default).
        topology.declare_topology(connection, queue_type=topology.QUORUM)
    leader = cluster.leader_of(topology.PULSES, VHOST, asking=first)
    others = [node for node in cluster.nodes if node != leader]
    # The leader listed first: every process of the project is connected to the node killed.
    broker_url = ";".join(node.url(VHOST) for node in (leader, *others))
    settings = services.settings_for_tests(broker_url=broker_url, broker_queue_type=topology.QUORUM)
    control = services.external_producer(broker_url)
    worker = WorkerProcess(settings, "cluster")
    client = create_app(settings).test_client()
    ledger, populated = Ledger(), Ledger()  # the publisher thread writes the first
    hour = hour_ago(2)
    statuses: list[int] = []
    accepted = threading.Semaphore(0)

    def post_pulses() -> None:
        for n in range(HTTP_BATCHES):
            pulses = make_pulses(ledger, HTTP_BATCH_SIZE, prefix=f"cluster-{n}", hour=hour)
            body = post_until_accepted(client, auth, pulses, statuses)
            assert body["accepted"] == len(pulses) and body["rejected"] == []
            accepted.release()

    worker.start(control)
    publisher = threading.Thread(target=post_pulses)
    try:
        publisher.start()
        for _ in range(KILL_AFTER_BATCHES):
            assert accepted.acquire(timeout=60), "the API accepted nothing before the kill"
        response = client.post("/api/v1/pulses/populate", json=POPULATE_JOB, headers=auth)
        assert response.status_code == 202, response.get_json()
        job_id = response.get_json()["job_id"]
        populate_ledger(populated, job_id)

        assert publisher.is_alive(), "the API's stream ended before the kill"
        cluster.kill(leader)

        publisher.join(180)
        assert not publisher.is_alive(), "the API publisher did not finish"
        new_leader = cluster.leader_of(topology.PULSES, VHOST, asking=others[0])
        assert new_leader in others
        # The test's own control connection was to that node too.
        control.close()
        control = control_reaching(worker, broker_url)

        def populate_done() -> bool:
            progress = client.get(f"/api/v1/pulses/populate/{job_id}", headers=auth)
            return progress.status_code == 200 and progress.get_json()["done"]

        wait_for(populate_done, timeout=120, what="the populate job published")

        # The raw queue is classic: it stayed on the killed node, and the worker went on
        # without it. With the node back, the worker consumes it again.
        cluster.restart(leader)
        raw_pulses = make_pulses(ledger, RAW_PULSES, prefix="raw", hour=hour)
        publish_raw(broker_url, [body_of(raw_pulses[n : n + 50]) for n in range(0, RAW_PULSES, 50)])
        wait_for(lambda: raw_queue_settled(cluster, others[0]), timeout=60, what="the raw queue consumed")
        persist_through_worker(control, worker, timeout=120)
    finally:
        worker.stop()
        control.close()
    # The raw queue was on the killed node: consumed again only once the node was back.
    assert "raw queue pulses.raw is unavailable" in worker.log.read_text()
    # Every batch accepted before, during and after the kill, and every populate pulse.
    assert set(statuses) <= {202, 503}
    assert statuses.count(202) == HTTP_BATCHES
    assert persisted_sums_per_group(database) == {**ledger.per_group(), **populated.per_group()}
    counted = sum(count for _, count in persisted_sums(database).values())
    assert counted == HTTP_BATCHES * HTTP_BATCH_SIZE + POPULATE_JOB["total_messages"] + RAW_PULSES
    print(f"cluster test: {time.monotonic() - started:.1f} s, statuses {statuses.count(503)}×503")
