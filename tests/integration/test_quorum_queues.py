"""BROKER_QUEUE_TYPE=quorum on the real RabbitMQ (one node): the same exact sums through
quorum task queues, nothing dropped by their delivery limit, and a clear error when
the queues exist with the other type.

A vhost of its own (the test vhost's name + `_quorum`): the session's vhost holds the
classic queues, and a queue cannot be both.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from celery import Celery
from kombu import Connection

from ingestor import create_app
from ingestor.messaging import amqp_transport, topology
from ingestor.pulses.publishing import publish_pulse_batch
from ingestor.pulses.task_names import PERSIST_PULSES
from ingestor.settings import Settings
from tests.support import services
from tests.support.ledger import Ledger, hour_ago, make_pulses, persisted_sums
from tests.support.worker import WorkerProcess, queue_depth, wait_until_idle

pytestmark = pytest.mark.usefixtures("clean_state")

QUORUM_VHOST = f"{services.RABBITMQ_VHOST}_quorum"
QUEUES = (topology.PULSES, topology.PERSIST)


@pytest.fixture(scope="module")
def quorum_settings(_services_ready: None) -> Settings:
    broker_url = services.recreate_vhost(QUORUM_VHOST)
    with Connection(broker_url) as connection:
        topology.declare_topology(connection, queue_type=topology.QUORUM)
    return services.settings_for_tests(broker_url=broker_url, broker_queue_type=topology.QUORUM)


@pytest.fixture(scope="module")
def quorum_producer(quorum_settings: Settings) -> Iterator[Celery]:
    producer = services.external_producer(quorum_settings.broker_url)
    yield producer
    producer.close()


def delayed_delivery_targets() -> set[str]:
    """The exchanges Celery's native delayed delivery exchange is bound to, in the quorum vhost."""
    rows = services.rabbitmqctl_rows("list_bindings", QUORUM_VHOST, "source_name", "destination_name")
    return {destination for source, destination in rows if source == "celery_delayed_delivery"}


def queue_type_of(broker_url: str, name: str) -> str:
    """The x-queue-type RabbitMQ reports for `name`: a quorum queue refuses a classic redeclare."""
    with Connection(broker_url) as connection:
        queue = topology.task_queue(name, topology.CLASSIC).bind(connection.channel())
        try:
            queue.declare()
        except Exception:  # 406: it is not classic
            return topology.QUORUM
        return topology.CLASSIC


def test_a_message_redelivered_past_the_delivery_limit_is_dead_lettered_not_dropped(quorum_settings):
    broker_url = quorum_settings.broker_url
    with Connection(broker_url, transport_options={"confirm_publish": True}) as connection:
        channel = connection.channel()
        producer = connection.Producer(channel)
        producer.publish(b"{}", exchange=topology.PULSES, routing_key=topology.PULSES, delivery_mode=2)
        queue = topology.task_queue(topology.PULSES, topology.QUORUM).bind(channel)
        deliveries = 0
        deadline = time.monotonic() + 30
        # A consumer that keeps failing: each reject with requeue is one more delivery.
        while queue_depth(broker_url, topology.DEAD_LETTERS) == 0 and time.monotonic() < deadline:
            message = queue.get(no_ack=False)
            if message is None:
                time.sleep(0.05)  # the requeued message is on its way back
                continue
            deliveries += 1
            message.requeue()
    assert queue_depth(broker_url, topology.PULSES) == 0
    # In pulses.dead, where replay_dead_letters finds it, not gone.
    assert queue_depth(broker_url, topology.DEAD_LETTERS) == 1
    assert deliveries == topology.DELIVERY_LIMIT + 1
    assert queue_type_of(broker_url, topology.PULSES) == topology.QUORUM


def test_sums_are_exact_through_quorum_queues(quorum_settings, quorum_producer, database):
    app = create_app(quorum_settings)
    celery_app = app.extensions["celery"]
    ledger = Ledger()
    hour = hour_ago(2)
    batches = [make_pulses(ledger, 200, prefix=f"q{n}", hour=hour) for n in range(5)]
    worker = WorkerProcess(quorum_settings, "quorum")
    worker.start(quorum_producer)
    try:
        for n, batch in enumerate(batches):
            publish_pulse_batch(celery_app, batch, task_id=f"quorum-{n}")
        # The same task published again (a producer's retry): counted once.
        publish_pulse_batch(celery_app, batches[0], task_id="quorum-0")
        wait_until_idle(quorum_producer, worker, QUEUES)
        quorum_producer.send_task(PERSIST_PULSES, exchange=topology.PERSIST, routing_key=topology.PERSIST)
        wait_until_idle(quorum_producer, worker, QUEUES)
    finally:
        worker.stop()
    assert persisted_sums(database) == ledger.expected()
    # Celery saw the quorum queues: no global QoS (quorum queues refuse it), and its
    # native delayed delivery (countdown retries) bound to each task exchange.
    assert "Global QoS is disabled" in worker.log.read_text()
    assert delayed_delivery_targets() >= {topology.PULSES, topology.PERSIST, topology.POPULATE}


def test_quorum_over_existing_classic_queues_is_a_clear_topology_conflict(settings):
    # The session's vhost holds the classic topology.
    with Connection(settings.broker_url) as connection:
        with pytest.raises(topology.TopologyConflict, match="BROKER_QUEUE_TYPE=quorum") as raised:
            topology.declare_topology(connection, raw_queue_name=None, queue_type=topology.QUORUM)
    assert "delete_queue pulses" in str(raised.value)


def test_a_publisher_fails_over_to_the_next_node_listed_in_broker_url(quorum_settings):
    # Port 1: nothing listens there, a node that is down.
    dead_node = quorum_settings.broker_url.replace("127.0.0.1:5672", "127.0.0.1:1")
    settings = replace(quorum_settings, broker_url=f"{dead_node};{quorum_settings.broker_url}")
    celery_app = create_app(settings).extensions["celery"]
    before = queue_depth(quorum_settings.broker_url, topology.PULSES)

    publish_pulse_batch(celery_app, [], task_id="failover-0")

    assert queue_depth(quorum_settings.broker_url, topology.PULSES) == before + 1


def test_a_connection_keeps_the_read_ahead_transport_when_it_fails_over(settings):
    # kombu's failover re-parses the next URL, whose scheme ("amqp") named py-amqp's own
    # transport: after a node died, the worker read the socket 7 bytes at a time again.
    dead_node = settings.broker_url.replace("127.0.0.1:5672", "127.0.0.1:1")
    celery_app = create_app(replace(settings, broker_url=f"{dead_node};{settings.broker_url}")).extensions[
        "celery"
    ]

    with celery_app.connection_for_read() as connection:
        connection.ensure_connection(max_retries=3, interval_start=0, interval_step=0)

        assert (connection.hostname, connection.port) == ("127.0.0.1", 5672)
        assert type(connection.transport).__module__ == amqp_transport.__name__


def test_a_worker_sets_up_delayed_delivery_on_its_node_not_on_a_dead_one_listed(
    quorum_settings, quorum_producer
):
    # Celery set it up on every node of BROKER_URL, trying a dead one three times over
    # about 18 s on each reconnect before the worker consumed again.
    dead_node = quorum_settings.broker_url.replace("127.0.0.1:5672", "127.0.0.1:1")
    settings = replace(quorum_settings, broker_url=f"{dead_node};{quorum_settings.broker_url}")
    worker = WorkerProcess(settings, "quorum-failover")
    worker.start(quorum_producer)  # answers a ping: its consumer steps have all run
    worker.stop()
    log = worker.log.read_text()
    assert "Retrying delayed delivery setup" not in log, worker.tail()
    assert "Failed to setup delayed delivery" not in log, worker.tail()
    assert "Global QoS is disabled" in log  # it did start on the quorum queues
    assert delayed_delivery_targets() >= {topology.PULSES, topology.PERSIST, topology.POPULATE}


def test_a_task_retried_with_backoff_on_quorum_queues_counts_once(quorum_settings, quorum_producer, database):
    # Its first two runs fail on a transient Redis error: retried with a countdown,
    # which on quorum queues travels through Celery's native delayed delivery.
    app = create_app(quorum_settings)
    ledger = Ledger()
    batch = make_pulses(ledger, 100, prefix="retried", hour=hour_ago(2))
    worker = WorkerProcess(
        quorum_settings,
        "quorum-flaky",
        app="tests.support.flaky_worker",
        extra_env={"FAIL_KEY": "test:flaky-failures", "FAIL_TIMES": "2"},
    )
    dead_before = queue_depth(quorum_settings.broker_url, topology.DEAD_LETTERS)
    worker.start(quorum_producer)
    try:
        publish_pulse_batch(app.extensions["celery"], batch, task_id="retried-0")
        deadline = time.monotonic() + 60
        while app.extensions["redis"].get("test:flaky-failures") in (None, b"1", b"2"):
            assert time.monotonic() < deadline, worker.tail()
            time.sleep(0.2)
        wait_until_idle(quorum_producer, worker, QUEUES)
        quorum_producer.send_task(PERSIST_PULSES, exchange=topology.PERSIST, routing_key=topology.PERSIST)
        wait_until_idle(quorum_producer, worker, QUEUES)
    finally:
        worker.stop()
    log = worker.log.read_text()
    assert log.count("Retry in") == 2, worker.tail()
    # Through native delayed delivery, not held in the worker until its ETA (what
    # Celery falls back to, with this warning, on a direct exchange).
    assert "Direct exchanges are not supported with native delayed delivery" not in log
    assert persisted_sums(database) == ledger.expected()
    assert queue_depth(quorum_settings.broker_url, topology.DEAD_LETTERS) == dead_before
