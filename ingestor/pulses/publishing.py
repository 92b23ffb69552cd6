"""Enqueueing pulse batches from inside the project (the API, the populate tasks).

Each publish waits for RabbitMQ's confirm, so "accepted" means "stored by the broker",
and declares the queues it relies on first, so a fresh deploy works whichever of web
and worker starts first (a message sent to an exchange with no queue is dropped).
"""

from __future__ import annotations

import socket
from typing import Any

import amqp.exceptions
import kombu.exceptions
from celery import Celery

from ingestor.messaging import topology
from ingestor.outages import BrokerUnavailable
from ingestor.pulses.task_names import INGEST_PULSES

__all__ = ["BrokerUnavailable", "configured_queue", "publish_pulse_batch", "publish_task"]

# Fail fast: an HTTP client waiting on a dead broker is better told 503 in seconds.
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}
CONFIRM_TIMEOUT_SECONDS = 10

BROKER_ERRORS = (
    kombu.exceptions.OperationalError,
    amqp.exceptions.MessageNacked,
    amqp.exceptions.RecoverableConnectionError,
    ConnectionError,
    socket.timeout,
    OSError,
)


def publish_task(celery_app: Celery, name: str, args: list[Any], queue, task_id: str | None = None) -> str:
    """Publish task `name` to `queue` with confirms; the task id, or BrokerUnavailable."""
    try:
        result = celery_app.send_task(
            name,
            args=args,
            task_id=task_id,
            exchange=queue.exchange.name,
            routing_key=queue.routing_key,
            declare=[topology.dead_letter_queue_of(celery_app.conf.task_default_queue_type), queue],
            retry=True,
            retry_policy=PUBLISH_RETRY_POLICY,
            confirm_timeout=CONFIRM_TIMEOUT_SECONDS,
        )
    except BROKER_ERRORS as exc:
        raise BrokerUnavailable(f"RabbitMQ did not confirm the message: {exc}") from exc
    return result.id


def publish_pulse_batch(celery_app: Celery, pulses: list[dict[str, Any]], task_id: str | None = None) -> str:
    """Enqueue `pulses` as one `ingestor.ingest_pulses` task; its task id."""
    return publish_task(
        celery_app, INGEST_PULSES, [pulses], configured_queue(celery_app, topology.PULSES), task_id
    )


def configured_queue(celery_app: Celery, name: str) -> Any:
    """The task queue `name` as `celery_app` is configured (its BROKER_QUEUE_TYPE)."""
    return next(queue for queue in celery_app.conf.task_queues if queue.name == name)
