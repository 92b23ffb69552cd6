"""BROKER_QUEUE_TYPE: the task queues each type declares, and what Celery is told of them."""

from __future__ import annotations

import pytest

from ingestor.celery_app import celery_config
from ingestor.messaging import topology
from ingestor.settings import Settings, SettingsError


def test_classic_is_the_default_and_the_first_topology() -> None:
    settings = Settings().validated()
    assert settings.broker_queue_type == "classic"
    config = celery_config(settings)
    assert config["task_queues"] == (topology.pulses_queue, topology.persist_queue, topology.populate_queue)
    assert config["task_default_exchange_type"] == "direct"
    assert topology.pulses_queue.queue_arguments == {"x-dead-letter-exchange": topology.DEAD_LETTERS}


def test_quorum_queues_have_topic_exchanges_a_delivery_limit_and_a_dead_letter_exchange() -> None:
    queues = celery_config(Settings(broker_queue_type="quorum").validated())["task_queues"]
    assert [queue.name for queue in queues] == [topology.PULSES, topology.PERSIST, topology.POPULATE]
    for queue in queues:
        # Native delayed delivery (countdown retries) binds only to topic exchanges.
        assert queue.exchange.type == "topic"
        assert queue.exchange.name == queue.name == queue.routing_key
        # Nothing redelivered past the limit is dropped: it goes to pulses.dead.
        assert queue.queue_arguments == {
            "x-queue-type": "quorum",
            "x-delivery-limit": topology.DELIVERY_LIMIT,
            "x-dead-letter-exchange": topology.DEAD_LETTERS,
        }


def test_quorum_mode_tells_celery_of_the_queue_type() -> None:
    config = celery_config(Settings(broker_queue_type="quorum").validated())
    assert config["task_default_queue_type"] == "quorum"
    assert config["task_default_exchange_type"] == "topic"
    assert config["worker_detect_quorum_queues"] is True


def test_an_unknown_queue_type_is_refused_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match="BROKER_QUEUE_TYPE must be one of classic, quorum, got 'stream'"):
        Settings.from_env({"BROKER_QUEUE_TYPE": "stream"})


def test_settings_and_topology_agree_on_the_queue_types() -> None:
    from ingestor.settings import BROKER_QUEUE_TYPES

    assert BROKER_QUEUE_TYPES == topology.QUEUE_TYPES


def test_the_dead_letter_queue_is_replicated_with_the_task_queues() -> None:
    # A classic pulses.dead lives on one node: with it down, RabbitMQ refuses its
    # declaration, which publishers and workers make on connecting.
    quorum = topology.dead_letter_queue_of(topology.QUORUM)
    assert quorum.name == topology.DEAD_LETTERS
    assert quorum.exchange is topology.dead_letter_exchange
    assert quorum.queue_arguments == {"x-queue-type": "quorum"}
    # Classic: the queue every earlier version declared, unchanged.
    assert topology.dead_letter_queue_of(topology.CLASSIC) is topology.dead_letter_queue
    assert not topology.dead_letter_queue.queue_arguments
