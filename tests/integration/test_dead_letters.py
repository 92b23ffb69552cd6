"""Messages that are not a pulse batch at all end in `pulses.dead`, with nothing counted."""

from __future__ import annotations

import json
import uuid

import pytest
from kombu import Connection, Exchange

from ingestor.messaging.topology import dead_letter_queue
from ingestor.pulses.task_names import INGEST_PULSES
from tests.support.worker import wait_until_idle

pytestmark = pytest.mark.usefixtures("clean_state")


def publish_raw(broker_url: str, body: bytes, headers: dict | None = None) -> None:
    with Connection(broker_url) as connection:
        producer = connection.Producer()
        producer.publish(
            body,
            exchange=Exchange("pulses", type="direct", durable=True),
            routing_key="pulses",
            content_type="application/json",
            content_encoding="utf-8",
            headers=headers or {},
            declare=[],
        )


def dead_letters(broker_url: str) -> list[bytes]:
    bodies = []
    with Connection(broker_url) as connection:
        queue = dead_letter_queue.bind(connection.default_channel)
        while (message := queue.get(no_ack=True)) is not None:
            bodies.append(message.body)
    return bodies


def celery_headers(task: str = INGEST_PULSES) -> dict:
    return {"lang": "py", "task": task, "id": str(uuid.uuid4()), "root_id": None, "parent_id": None}


def test_non_batches_are_dead_lettered_and_count_nothing(producer, worker, settings, redis_client, database):
    producer.send_task(
        INGEST_PULSES, args=[{"tenant": "a dict, not a list"}], exchange="pulses", routing_key="pulses"
    )
    producer.send_task(INGEST_PULSES, args=[], exchange="pulses", routing_key="pulses")
    producer.send_task("ingestor.no_such_task", args=[[]], exchange="pulses", routing_key="pulses")
    publish_raw(settings.broker_url, b'[[{"tenant": "broken json', celery_headers())
    publish_raw(settings.broker_url, b"[" * 100_000 + b"]" * 100_000, celery_headers())
    # A bare pulse without the Celery envelope (what the raw queue is for).
    publish_raw(settings.broker_url, json.dumps({"tenant": "t"}).encode())
    wait_until_idle(producer, worker, ("pulses",))

    assert len(dead_letters(settings.broker_url)) == 6
    assert redis_client.dbsize() == 0
