"""Publishing to the raw pulse queue as the first version's producers do: plain kombu.

No Celery and nothing of the ingestor: bare JSON bodies, the default exchange, the
queue name as routing key, publisher confirms.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from kombu import Connection

from ingestor.messaging.topology import RAW_PULSES, dead_letter_queue


def publish_raw(
    broker_url: str,
    bodies: Iterable[bytes | str | tuple[bytes | str, str | None]],
    queue: str = RAW_PULSES,
) -> int:
    """Publish each body (optionally with an AMQP message_id) to `queue`; return how many.

    kombu sends bytes as `content_encoding=binary` and a str as utf-8, which the
    consumer's AMQP client hands over as bytes and as str: both paths are exercised.
    """
    published = 0
    with Connection(broker_url, transport_options={"confirm_publish": True}) as connection:
        producer = connection.Producer()
        for item in bodies:
            body, message_id = item if isinstance(item, tuple) else (item, None)
            properties = {"message_id": message_id} if message_id is not None else {}
            producer.publish(
                body,
                exchange="",
                routing_key=queue,
                content_type="application/json",
                delivery_mode=2,
                **properties,
            )
            published += 1
    return published


def body_of(pulses: Any) -> bytes:
    """A JSON body (a pulse or an array); Decimal-free values only (use strings)."""
    return json.dumps(pulses).encode()


def dead_letter_messages(broker_url: str) -> list[tuple[bytes, dict[str, Any], dict[str, Any]]]:
    """Drain `pulses.dead`: (body, headers, properties) of each message it held."""
    held = []
    with Connection(broker_url) as connection:
        queue = dead_letter_queue.bind(connection.default_channel)
        while (message := queue.get(no_ack=True)) is not None:
            body = message.body
            body = body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass")
            held.append((body, dict(message.headers or {}), dict(message.properties)))
    return held


def dead_letters(broker_url: str) -> list[bytes]:
    """Drain `pulses.dead` and return the bodies it held."""
    return [body for body, _, _ in dead_letter_messages(broker_url)]
