"""Worker consumer tweaks: declare the whole topology, dead-letter undecodable messages."""

from __future__ import annotations

import logging
from typing import ClassVar

from celery import bootsteps
from celery.worker.consumer import Consumer

from ingestor.messaging.topology import declare_topology
from ingestor.settings import settings_of

logger = logging.getLogger(__name__)


class DeadLetteringConsumer(Consumer):
    """Celery's consumer, but a message whose body cannot be decoded is dead-lettered.

    Celery acks (drops) such a message by default; we reject it without requeue, so
    RabbitMQ moves it to `pulses.dead` where an operator can read and replay it.
    """

    def on_decode_error(self, message, exc):  # Celery's signature
        logger.error(
            "undecodable message dead-lettered",
            extra={
                "error": repr(exc)[:500],
                "content_type": message.content_type,
                "delivery_tag": message.delivery_tag,
            },
        )
        message.reject(requeue=False)


class DeclareTopology(bootsteps.StartStopStep):
    """Declare the exchanges and queues (the dead-letter ones too) on every connect."""

    requires: ClassVar[set[str]] = {"celery.worker.consumer.connection:Connection"}

    def start(self, parent: Consumer) -> None:
        # The raw queue is declared by the raw consumer step, under its configured name.
        queue_type = settings_of(parent.app.flask_app).broker_queue_type
        declare_topology(parent.connection, raw_queue_name=None, queue_type=queue_type)
