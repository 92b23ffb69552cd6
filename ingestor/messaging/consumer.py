"""Worker consumer tweaks: declare the whole topology, dead-letter undecodable messages,
set up native delayed delivery on the node the worker is connected to."""

from __future__ import annotations

import logging
from typing import ClassVar

from celery import bootsteps
from celery.worker.consumer import Consumer
from celery.worker.consumer.delayed_delivery import DelayedDelivery
from kombu import Connection

from ingestor.messaging.topology import declare_topology
from ingestor.settings import settings_of

logger = logging.getLogger(__name__)


class DelayedDeliveryOnCurrentNode(DelayedDelivery):
    """Celery's native delayed delivery setup, on the node the consumer is connected to.

    Celery declares the delayed-delivery exchanges and binds the queues on every node
    listed in `BROKER_URL`, each with three tries: after a node died, each reconnect of
    the worker tried the dead node for about 18 s before it consumed again. A RabbitMQ
    cluster's exchanges and bindings are the cluster's, so the node the worker reached
    is enough; and a worker that fails over to another broker sets it up there on
    that reconnect.
    """

    def start(self, c: Consumer) -> None:
        self._connected_to = c.connection
        super().start(c)

    def _validate_broker_urls(self, broker_urls: str | list[str]) -> set[str]:
        urls: set[str] = super()._validate_broker_urls(broker_urls)
        connected_to = getattr(self, "_connected_to", None)
        if connected_to is None:
            return urls
        current = {url for url in urls if _same_node(Connection(url), connected_to)}
        return current or urls


def _same_node(one: Connection, other: Connection) -> bool:
    """Whether two kombu connections name the same broker node and virtual host."""
    return (one.hostname, one.port, one.virtual_host) == (other.hostname, other.port, other.virtual_host)


class DeadLetteringConsumer(Consumer):
    """Celery's consumer, but a message whose body cannot be decoded is dead-lettered.

    Celery acks (drops) such a message by default; we reject it without requeue, so
    RabbitMQ moves it to `pulses.dead` where an operator can read and replay it.
    Native delayed delivery is set up on the current node only (`DelayedDeliveryOnCurrentNode`).
    """

    class Blueprint(Consumer.Blueprint):
        """Celery's consumer steps, with delayed delivery set up on the current node."""

        default_steps = tuple(
            f"{__name__}:DelayedDeliveryOnCurrentNode" if step.endswith(":DelayedDelivery") else step
            for step in Consumer.Blueprint.default_steps
        )

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
