"""Replaying dead letters: moving messages from `pulses.dead` back to where they died.

RabbitMQ records where a dead-lettered message came from in its `x-death` header
(queue, exchange, routing keys). After an outage that exhausted a task's retries,
an operator fixes the cause and replays: each message is republished, with its body,
properties and headers untouched (a Celery task keeps its id, so its pulses keep
their dedupe keys and count once), to the exchange and routing key it was first
published with, confirmed by RabbitMQ, and only then acked in `pulses.dead`.
A message without `x-death` (published there by hand) is left in place.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kombu import Connection, Message

from ingestor.messaging.topology import dead_letter_queue

logger = logging.getLogger(__name__)

# Properties kombu's Producer.publish takes by keyword, as AMQP names them.
_KEPT_PROPERTIES = ("correlation_id", "reply_to", "priority", "expiration", "message_id", "timestamp", "type", "user_id", "app_id")


@dataclass
class ReplayReport:
    """What a replay moved, per original queue, and what it left."""

    replayed: Counter[str] = field(default_factory=Counter)
    left: int = 0


def origin_of(headers: dict[str, Any] | None) -> tuple[str, str, str] | None:
    """(queue, exchange, routing key) a dead letter first died in; None if unknown."""
    deaths = (headers or {}).get("x-death") or []
    if not deaths:
        return None
    # RabbitMQ keeps the most recent death first; the original publication is in
    # every entry alike (exchange and routing keys as first published).
    death = deaths[0]
    routing_keys = death.get("routing-keys") or [death.get("queue")]
    queue, exchange = death.get("queue"), death.get("exchange", "")
    if not queue or routing_keys[0] is None:
        return None
    return str(queue), str(exchange), str(routing_keys[0])


def replay_dead_letters(broker_url: str, limit: int | None = None) -> ReplayReport:
    """Move up to `limit` dead letters (default: all present now) back to their queues."""
    report = ReplayReport()
    held: list[Message] = []
    with Connection(broker_url, transport_options={"confirm_publish": True}) as connection:
        channel = connection.channel()
        queue = dead_letter_queue.bind(channel)
        _, present, _ = queue.queue_declare(passive=True)
        # Only what is there now: a replayed message that dies again must not loop.
        budget = present if limit is None else min(limit, present)
        producer = connection.Producer(channel)
        try:
            while budget > 0 and (message := queue.get(no_ack=False)) is not None:
                budget -= 1
                origin = origin_of(message.headers)
                if origin is None:
                    held.append(message)  # unacked until the end, so get() moves past it
                    continue
                original_queue, exchange, routing_key = origin
                _republish(producer, message, exchange, routing_key)
                message.ack()
                report.replayed[original_queue] += 1
        finally:
            for message in held:
                message.requeue()
            report.left = len(held)
            channel.close()
    logger.info(
        "dead letters replayed: %d (left %d)", sum(report.replayed.values()), report.left,
        extra={"replayed": dict(report.replayed), "left": report.left},
    )  # fmt: skip
    return report


def _republish(producer: Any, message: Message, exchange: str, routing_key: str) -> None:
    body = message.body
    if isinstance(body, str):  # py-amqp decoded it with the message's content_encoding
        body = body.encode(message.content_encoding or "utf-8", "surrogatepass")
    headers = {k: v for k, v in (message.headers or {}).items() if not k.startswith("x-")}
    properties = {k: message.properties[k] for k in _KEPT_PROPERTIES if message.properties.get(k) is not None}
    producer.publish(
        body,
        exchange=exchange,
        routing_key=routing_key,
        content_type=message.content_type,
        content_encoding=message.content_encoding or "binary",
        headers=headers,
        delivery_mode=message.properties.get("delivery_mode", 2),
        retry=True,
        retry_policy={"max_retries": 2},
        **properties,
    )
