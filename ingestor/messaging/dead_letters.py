"""Dead letters: publishing them to `pulses.dead`, and replaying them from there.

Two ways in. The Celery task queue `pulses` dead-letters through RabbitMQ (its
`x-dead-letter-exchange` argument), and RabbitMQ records where the message came
from in its `x-death` header (queue, exchange, routing keys). The raw queue has no
arguments (the first version's producers declare it without any, and RabbitMQ
refuses a declaration that differs), so its consumer publishes what it cannot count
to `pulses.dead` itself (`DeadLetterPublisher`), with a confirm, before it acks the
original; its headers `x-ingestor-dead-letter-queue` and `...-reason` say where it
came from and why.

After an outage that exhausted a task's retries, or a fix for what made raw bodies
unreadable, an operator replays: each message is republished, with its body,
properties and headers untouched (a Celery task keeps its id, so its pulses keep
their dedupe keys and count once), to the exchange and routing key it was first
published with (a raw body: the default exchange, its raw queue), confirmed by
RabbitMQ, and only then acked in `pulses.dead`. A message with neither header
(published there by hand) is left in place.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kombu import Connection, Message

from ingestor.messaging.topology import CLASSIC, dead_letter_exchange, dead_letter_queue, dead_letter_queue_of

logger = logging.getLogger(__name__)

# Set by the raw consumer on what it dead-letters: the queue it was consumed from
# (its origin: the default exchange, that queue's name as routing key) and why.
ORIGIN_QUEUE_HEADER = "x-ingestor-dead-letter-queue"
REASON_HEADER = "x-ingestor-dead-letter-reason"
# A reason is for a human; a hostile body must not make it huge.
MAX_REASON_CHARS = 500
# How long a dead-letter publish may wait for its confirm (it blocks the raw consumer).
CONFIRM_TIMEOUT_SECONDS = 10.0

# Properties kombu's Producer.publish takes by keyword, as AMQP names them.
_KEPT_PROPERTIES = (
    "correlation_id",
    "reply_to",
    "priority",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
)
# Not on a dead letter: an expiration would let it vanish from pulses.dead, and
# RabbitMQ refuses a user_id other than the publishing connection's (forever).
_DEAD_LETTER_PROPERTIES = tuple(k for k in _KEPT_PROPERTIES if k not in ("expiration", "user_id"))


@dataclass
class ReplayReport:
    """What a replay moved, per original queue, and what it left."""

    replayed: Counter[str] = field(default_factory=Counter)
    left: int = 0


class DeadLetterPublishFailed(Exception):
    """`pulses.dead` did not confirm a dead letter: keep the original unacked, retry later."""


class DeadLetterPublisher:
    """Publishes messages to `pulses.dead`, each confirmed by RabbitMQ, on a connection of its own.

    Its own connection, not the worker's: waiting for a confirm on the worker's
    connection would dispatch that connection's deliveries (raw pulses, Celery tasks)
    from inside the wait, re-entering the consumer in the middle of its batch.
    Opened on first use; after any failure it is dropped and opened again (the
    exchange and queue re-declared) on the next attempt.
    """

    def __init__(self, broker_url: str, queue_type: str = CLASSIC) -> None:
        self.broker_url = broker_url
        # Declared as the worker declares it (BROKER_QUEUE_TYPE): another type is refused.
        self.queue = dead_letter_queue_of(queue_type)
        self._connection: Connection | None = None
        self._producer: Any = None
        self._returned: list[str] = []

    def publish(self, body: bytes, *, properties: dict[str, Any], origin_queue: str, reason: str) -> None:
        """Publish `body` (with the original's `properties`) to `pulses.dead`, confirmed.

        Raises `DeadLetterPublishFailed` unless RabbitMQ confirmed it and routed it
        to a queue (mandatory: a dead letter with nowhere to go is a failure too).
        """
        headers = {
            **(properties.get("application_headers") or properties.get("headers") or {}),
            ORIGIN_QUEUE_HEADER: origin_queue,
            REASON_HEADER: reason[:MAX_REASON_CHARS],
        }
        kept = {k: properties[k] for k in _DEAD_LETTER_PROPERTIES if properties.get(k) is not None}
        try:
            producer = self._ready_producer()
            self._returned.clear()
            producer.publish(
                body,
                exchange=dead_letter_exchange,
                routing_key=dead_letter_queue.routing_key,
                content_type=properties.get("content_type") or "application/octet-stream",
                content_encoding=properties.get("content_encoding") or "binary",
                headers=headers,
                # Persistent whatever the original was: it waits for an operator.
                delivery_mode=2,
                mandatory=True,
                timeout=CONFIRM_TIMEOUT_SECONDS,
                **kept,
            )
        except Exception as exc:  # whatever failed, the dead letter is not stored
            self.close()
            raise DeadLetterPublishFailed(
                f"publish to {dead_letter_exchange.name} failed: {exc!r:.300}"
            ) from exc
        if self._returned:
            self.close()
            raise DeadLetterPublishFailed(
                f"{dead_letter_exchange.name} routed it nowhere: {self._returned[0]}"
            )

    def close(self) -> None:
        """Drop the connection (the next publish opens a new one)."""
        connection, self._connection, self._producer = self._connection, None, None
        if connection is not None:
            try:
                connection.release()
            except Exception:  # it is being thrown away
                logger.debug("dead-letter connection did not close cleanly", exc_info=True)

    def _ready_producer(self) -> Any:
        if self._producer is None:
            connection = Connection(
                self.broker_url,
                connect_timeout=CONFIRM_TIMEOUT_SECONDS,
                transport_options={"confirm_publish": True},
            )
            self._connection = connection
            channel = connection.channel()
            # Re-declared on every new connection: an operator may have deleted them.
            self.queue.bind(channel).declare()
            self._producer = connection.Producer(channel, on_return=self._on_return)
        return self._producer

    def _on_return(self, exception: Exception, exchange: str, routing_key: str, message: Any) -> None:
        self._returned.append(repr(exception))


def body_bytes(body: bytes | str, content_encoding: str | None) -> bytes:
    """A message body as the bytes that were published.

    py-amqp hands over a str when the message has a content_encoding it could apply,
    and an empty str for an empty body whatever its content_encoding (e.g. "binary").
    """
    if isinstance(body, str):
        try:
            return body.encode(content_encoding or "utf-8", "surrogatepass")
        except LookupError:  # not a codec: py-amqp could not have decoded with it
            return body.encode("utf-8", "surrogatepass")
    return bytes(body)


def origin_of(headers: dict[str, Any] | None) -> tuple[str, str, str] | None:
    """(queue, exchange, routing key) a dead letter first died in; None if unknown."""
    raw_queue = (headers or {}).get(ORIGIN_QUEUE_HEADER)
    if isinstance(raw_queue, str) and raw_queue:
        # Published by the raw consumer: back through the default exchange to its queue.
        return raw_queue, "", raw_queue
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
        # A node that is down is kombu's OperationalError (an outage), not a bare socket
        # error: failover URLs are each tried once, then the command says RabbitMQ is out.
        connection.ensure_connection(max_retries=1)
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
        "dead letters replayed: %d (left %d)",
        sum(report.replayed.values()),
        report.left,
        extra={"replayed": dict(report.replayed), "left": report.left},
    )
    return report


def _republish(producer: Any, message: Message, exchange: str, routing_key: str) -> None:
    body = body_bytes(message.body, message.content_encoding)
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
