"""The raw pulse queue: bare JSON pulses, consumed in batches inside the Celery worker.

The first version's producers publish one pulse (or an array of pulses) per AMQP
message, with no Celery envelope, through the default exchange to a durable queue
(`RAW_QUEUE`, default `pulses.raw`). A Celery task consumer cannot read those, and one
task per pulse would be slow, so `celery -A ingestor worker` also runs a consumer
bootstep of its own (Celery's extension point for custom message consumers), on a
channel of its own, in the worker's main process:

1. on each message (in the worker's event loop): check the size, decode the JSON
   (numbers with a fraction or an exponent as the Decimal of their text), validate
   its pulses. A body that is not JSON, not a pulse or an array of pulses, or too
   large counts nothing and is marked as a dead letter;
2. keep the message, unacked, in the open batch;
3. once the batch holds `RAW_BATCH_SIZE` pulses, or its oldest message has waited
   `RAW_BATCH_WAIT_MS`: publish its dead letters to `pulses.dead` (each confirmed by
   RabbitMQ), count all its valid pulses in Redis (one Lua call per
   `REDIS_CHUNK_SIZE` pulses, the script of `ingestor.ingest_pulses`), record its
   invalid pulses in PostgreSQL, and only then ack the whole batch with one
   `basic.ack(multiple=True)`.

The queue is declared as the first version's producers declare it (durable, no
arguments: see `topology.raw_queue`), so dead-lettering cannot come from a queue
argument: the consumer publishes dead letters itself. When that publish fails, the
batch is held unacked and retried with backoff, like a Redis outage.

Nothing is acked before it is counted: a worker killed at any point leaves every
uncounted message unacked, and RabbitMQ redelivers it. The dedupe keys make that
redelivery count once: (tenant, id) for a pulse with an `id`; (AMQP `message_id`,
index) for one without, when its producer set a message_id. A pulse with neither gets
a random key: counted once in normal operation, but counted twice if the worker dies
between the Redis write and the ack (the README says so, and recommends ids).

The batch logic (`decode_body`, `prepare_message`, `PendingBatch`) is plain code;
`RawPulseConsumerStep` is the kombu/Celery glue around it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any, Generic, TypeVar

from amqp.basic_message import Message
from amqp.exceptions import AMQPError, NotFound, PreconditionFailed
from celery import bootsteps
from flask import Flask
from kombu import Consumer
from kombu.common import ignore_errors

from ingestor.messaging.dead_letters import DeadLetterPublisher, DeadLetterPublishFailed, body_bytes
from ingestor.messaging.topology import raw_queue
from ingestor.observability import metrics
from ingestor.observability.redis_memory import MemoryWatch
from ingestor.outages import TRANSIENT_ERRORS, ErrorTypes
from ingestor.pulses import keys
from ingestor.pulses.aggregation import CountablePulse
from ingestor.pulses.ingest import PulseValidator
from ingestor.pulses.rejections import Rejection, record_rejections_of_messages
from ingestor.redis_store import is_out_of_memory
from ingestor.settings import settings_of

logger = logging.getLogger(__name__)

# A batch failing with these is held unacked and retried (the service may be back in
# a moment; pulses.dead may confirm next time); any other error is a bug.
RETRIED_ERRORS: ErrorTypes = (*TRANSIENT_ERRORS, DeadLetterPublishFailed)

M = TypeVar("M")

# A batch that failed on a transient error is retried after 0.5 s, 1 s, 2 s... up to this.
RETRY_BACKOFF_MAX_SECONDS = 30.0
# AMQP's prefetch count is a 16-bit field.
MAX_PREFETCH = 65535
# How often a worker tries the raw queue again while its RabbitMQ node is down.
UNAVAILABLE_RETRY_SECONDS = 2.0
# rejected_pulse.source is a VARCHAR(64).
MAX_SOURCE_CHARS = 64
# A producer's message_id is shown in rejected_pulse.message_id (VARCHAR(255)) up to this.
MAX_SHOWN_MESSAGE_ID_CHARS = 200


# Raw bodies are plain JSON from producers that know nothing of Celery or kombu. A
# number with a fraction or an exponent (a float encoder writes `2.25`, `0.000001`,
# `5e-07`, `1e+21`) becomes the Decimal of its literal text, never a float; NaN and
# Infinity too, so the schema can say "must be finite". A decoder of its own, not
# the one Celery messages are read with: no kombu tagged objects here, and nothing
# that depends on what is registered for the process.
_RAW_JSON = json.JSONDecoder(parse_float=Decimal, parse_constant=Decimal)


class UndecodableBody(ValueError):
    """A raw message body that is not a pulse or an array of pulses: dead-lettered.

    `kind` is one of a fixed set (`too_large`, `not_json`, `not_pulses`), for metrics.
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def decode_body(body: bytes | str, max_bytes: int) -> list[Any]:
    """The pulses of a raw message body: a JSON object is one pulse, an array is many.

    Raises `UndecodableBody` for a body over `max_bytes`, not UTF-8, not JSON (nesting
    too deep for the decoder included), or neither an object nor an array. Numbers
    with a fraction or an exponent become `Decimal`, never floats. What the pulses
    hold is the schema's job.
    """
    # py-amqp hands over a str when the producer set a content_encoding it could apply.
    data = body_bytes(body, "utf-8")
    if len(data) > max_bytes:
        raise UndecodableBody(f"body of {len(data)} bytes exceeds the limit of {max_bytes}", "too_large")
    try:
        decoded = _RAW_JSON.decode(data.decode("utf-8"))
    except RecursionError:
        raise UndecodableBody("JSON nested too deeply", "not_json") from None
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise UndecodableBody(f"not UTF-8 JSON: {exc!r:.200}", "not_json") from None
    if isinstance(decoded, dict):
        return [decoded]
    if isinstance(decoded, list):
        return decoded
    raise UndecodableBody(f"a JSON {type(decoded).__name__}, not a pulse or an array of pulses", "not_pulses")


def fallback_key_of(amqp_message_id: str | None) -> Callable[[int], keys.Position]:
    """How a pulse without `id` in this message is deduplicated, by its index.

    By (message_id, index) when the producer set an AMQP message_id: stable across
    redeliveries and republishing. Otherwise by a random scope: the message counts once
    in normal operation, but a redelivery after the Redis write counts it again.
    """
    if amqp_message_id:
        return partial(keys.position_in_amqp_message, amqp_message_id)
    scope: list[str] = []

    def random_scope_key(index: int) -> keys.Position:
        # Drawn on first use only: most pulses carry an id, and uuid4 was 7% of the
        # consumer's time when drawn for every message.
        if not scope:
            scope.append(str(uuid.uuid4()))
        return keys.position_in_message(scope[0], index)

    return random_scope_key


def rejection_id_of(body: bytes | str, amqp_message_id: str | None) -> str:
    """The rejected_pulse.message_id of a raw message.

    rejected_pulse rows are unique on (message_id, position), so two different messages
    must never share an id. With an AMQP message_id it is a digest of the body and
    that message_id (then, for a reader, the message_id itself when printable): only
    the same message again shares its rows. Without one, nothing tells a redelivery
    from a second identical message (the first version's producers send the same
    pulse text again and again), and a rejected row is usage that
    `flask pulses replay-rejected` can bill: each delivery gets rows of its own, the
    same limit as counting such pulses (a redelivery after the write records twice).
    """
    if not amqp_message_id:
        return f"raw:{uuid.uuid4().hex}"
    data = body_bytes(body, "utf-8")
    mid = amqp_message_id.encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(b"%d:" % len(mid), digest_size=16)
    digest.update(mid)
    digest.update(data)
    ident = f"raw:{digest.hexdigest()}"
    if amqp_message_id.isprintable():
        ident += f":{amqp_message_id[:MAX_SHOWN_MESSAGE_ID_CHARS]}"
    return ident


@dataclass(frozen=True)
class PreparedMessage(Generic[M]):
    """A raw message decoded and validated, waiting in a batch for its ack."""

    handle: M  # the broker's message (py-amqp's Message), opaque to the batch logic
    countable: list[CountablePulse]
    rejections: list[Rejection]
    rejection_id: str
    # Set for a message to publish to `pulses.dead` instead of counting: why, and
    # the kind of reason (a fixed set, for metrics).
    dead_letter: str | None = None
    dead_letter_kind: str = ""

    @property
    def pulse_count(self) -> int:
        return len(self.countable) + len(self.rejections)


def prepare_message(
    handle: M,
    body: bytes | str,
    amqp_message_id: str | None,
    *,
    validator: PulseValidator,
    max_body_bytes: int,
    received_at: datetime,
) -> PreparedMessage[M]:
    """Decode and validate one raw message; raises `UndecodableBody` (dead-letter it).

    Validated once, on arrival: a batch retried after an outage reuses these exact
    dedupe keys and verdicts, so a retry can neither count twice nor change its mind.
    """
    pulses = decode_body(body, max_body_bytes)
    countable, rejections = validator.split(
        pulses, fallback_key=fallback_key_of(amqp_message_id), received_at=received_at
    )
    rejection_id = rejection_id_of(body, amqp_message_id) if rejections else ""
    return PreparedMessage(handle, countable, rejections, rejection_id)


def dead_letter_message(handle: M, reason: str, kind: str) -> PreparedMessage[M]:
    """A message that counts nothing: it waits in the batch to be dead-lettered."""
    return PreparedMessage(handle, [], [], "", dead_letter=reason, dead_letter_kind=kind)


class PendingBatch(Generic[M]):
    """The open batch: prepared messages held unacked until they are counted.

    It closes (`is_due`) when it holds `max_pulses` pulses (or as many messages, for
    bodies of empty arrays), or when its oldest message has waited `max_wait_seconds`.
    After a failed attempt it waits an exponential backoff before the next one, and
    keeps taking messages meanwhile (the prefetch count bounds how many).
    """

    def __init__(self, max_pulses: int, max_wait_seconds: float) -> None:
        self.max_pulses = max_pulses
        self.max_wait_seconds = max_wait_seconds
        self.messages: list[PreparedMessage[M]] = []
        # The dead letters not published yet (a retry must not publish one twice).
        self.unpublished_dead_letters: list[PreparedMessage[M]] = []
        self.pulse_count = 0
        self.failures = 0
        self._opened_at = 0.0
        self._retry_at: float | None = None

    def __len__(self) -> int:
        return len(self.messages)

    def add(self, message: PreparedMessage[M], now: float) -> None:
        """Hold `message` in the batch (`now`: a monotonic clock reading)."""
        if not self.messages:
            self._opened_at = now
        self.messages.append(message)
        self.pulse_count += message.pulse_count
        if message.dead_letter is not None:
            self.unpublished_dead_letters.append(message)

    def dead_letter_all(self, reason: str, kind: str) -> None:
        """Make every message not already a dead letter one: it will count nothing."""
        for index, message in enumerate(self.messages):
            if message.dead_letter is None:
                converted = replace(
                    message, countable=[], rejections=[], dead_letter=reason, dead_letter_kind=kind
                )
                self.messages[index] = converted
                self.unpublished_dead_letters.append(converted)

    def is_due(self, now: float) -> bool:
        """Whether the batch should be counted and acked now."""
        if not self.messages:
            return False
        if self._retry_at is not None:
            return now >= self._retry_at
        full = self.pulse_count >= self.max_pulses or len(self.messages) >= self.max_pulses
        return full or now - self._opened_at >= self.max_wait_seconds

    def countable(self) -> list[CountablePulse]:
        """Every valid pulse of the batch, for one `PulseCounter.count` call."""
        return [pulse for message in self.messages for pulse in message.countable]

    def rejections(self) -> list[tuple[str, Sequence[Rejection]]]:
        """(rejection id, rejections) of each message that has invalid pulses."""
        return [(m.rejection_id, m.rejections) for m in self.messages if m.rejections]

    def last(self) -> M:
        """The handle of the newest message: acking it with multiple=True acks them all."""
        return self.messages[-1].handle

    def postpone(self, now: float) -> float:
        """Record a failed attempt; return the seconds until the next one."""
        self.failures += 1
        delay = min(0.5 * 2 ** (self.failures - 1), RETRY_BACKOFF_MAX_SECONDS)
        self._retry_at = now + delay
        return delay

    def clear(self) -> None:
        """Forget every message (acked, rejected, or left to the broker to redeliver)."""
        self.messages = []
        self.unpublished_dead_letters = []
        self.pulse_count = 0
        self.failures = 0
        self._retry_at = None


class BareMessageConsumer(Consumer):
    """kombu's Consumer, handing `on_message` py-amqp's own message, not a kombu Message.

    kombu wraps every delivery in its Message (offering decompression and decoding)
    before `on_message`; the raw consumer decodes bodies itself, and the wrapping was
    ~20% of its process in a profile (Message.__init__ alone 8%). Acks and rejects go
    straight to the channel (`ack_through`, `reject`).
    """

    on_message: Callable[[Message], None]  # always given: this consumer has no other way

    def _receive_callback(self, message: Message) -> None:
        self.on_message(message)


def ack_through(message: Message) -> None:
    """Ack `message` and every earlier unacked delivery of its channel (basic.ack multiple)."""
    message.channel.basic_ack(message.delivery_tag, multiple=True)


def reject(message: Message, requeue: bool) -> None:
    """basic.reject: back to the queue, or (requeue False) to the dead-letter exchange."""
    message.channel.basic_reject(message.delivery_tag, requeue=requeue)


class RawPulseConsumerStep(bootsteps.ConsumerStep):
    """Consumes the raw pulse queue in batches, in the worker's main process.

    Runs on the consumer's event loop: the message callback and the flush timer never
    run at the same time, so the batch needs no lock. Like Celery's own steps, it reads
    what it needs from the consumer it is given: the Flask app whose services it uses
    is `parent.app.flask_app`, set on the Celery app by the wiring (`celery_init_app`).
    """

    requires = (
        "celery.worker.consumer.connection:Connection",
        "ingestor.messaging.consumer:DeclareTopology",
    )

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        app: Flask = parent.app.flask_app
        settings = settings_of(app)
        services = app.extensions["pulses"]
        self.validator: PulseValidator = services.validator
        self.counter = services.counter
        self.database = app.extensions["database"]
        self.memory: MemoryWatch = app.extensions["redis_memory"]
        self.queue = raw_queue(settings.raw_queue)
        self.dead_letters = DeadLetterPublisher(settings.broker_url, settings.broker_queue_type)
        self.source = f"raw:{settings.raw_queue}"[:MAX_SOURCE_CHARS]
        self.max_body_bytes: int = settings.raw_max_body_bytes
        self.batch: PendingBatch[Message] = PendingBatch(
            settings.raw_batch_size, settings.raw_batch_wait_ms / 1000
        )
        # Room for the next batch to arrive while this one is being counted.
        self.prefetch_count = min(2 * settings.raw_batch_size, MAX_PREFETCH)
        # Ticks at half the wait (at most every 0.25 s, for the retry backoff): a
        # trickle's batch closes between one and one and a half waits after it opened.
        self.tick_seconds = max(min(settings.raw_batch_wait_ms / 2000, 0.25), 0.005)
        self._tick = None
        # The connection on which the raw queue's node was down, if it was (see get_consumers).
        self.unavailable_on: Any = None
        self.next_declare_at = 0.0

    def get_consumers(self, channel: Any) -> list[Consumer]:
        """One consumer of the raw queue on the step's own channel (declares the queue)."""
        # A new channel: messages held for an old one were returned by the broker when
        # it went away, and their delivery tags mean nothing here.
        self.batch.clear()
        self.unavailable_on = None
        try:
            return self.consumers_on(channel)
        except NotFound as exc:
            # A classic queue lives on one RabbitMQ node: with that node down, RabbitMQ
            # refuses to declare it (404 "home node ... is down"). Its messages wait on
            # that node; crashing the worker would also stop the quorum task queues,
            # which the nodes left still serve. So the raw queue is retried on ticks.
            logger.error(
                "raw queue %s is unavailable (%s): consuming it again once its RabbitMQ node is back",
                self.queue.name,
                exc.reply_text,
                extra={"queue": self.queue.name},
            )
            self.unavailable_on = channel.connection
            self.next_declare_at = time.monotonic() + UNAVAILABLE_RETRY_SECONDS
            return []

    def consumers_on(self, channel: Any) -> list[Consumer]:
        """The raw queue declared on `channel`, and its consumer (not consuming yet)."""
        channel = self.declare_queue(channel)
        return [
            BareMessageConsumer(
                channel,
                queues=[self.queue],
                on_message=self.on_message,  # the raw message: we decode it ourselves
                prefetch_count=self.prefetch_count,
                no_ack=False,
                auto_declare=False,  # declared above
            )
        ]

    def retry_unavailable_queue(self) -> None:
        """Declare the raw queue again on the worker's connection; consume it if it is back."""
        connection, self.next_declare_at = self.unavailable_on, time.monotonic() + UNAVAILABLE_RETRY_SECONDS
        try:
            consumers = self.consumers_on(connection.channel())
        except (AMQPError, OSError):
            return  # still down (or the connection is going: reconnecting calls get_consumers)
        for consumer in consumers:
            consumer.consume()
        held: list[Consumer] = getattr(self, "consumers", None) or []  # celery.bootsteps has no types
        self.consumers = [*held, *consumers]  # where Celery's stop cancels them
        self.unavailable_on = None
        logger.info("raw queue %s is available again: consuming it", self.queue.name)

    def declare_queue(self, channel: Any) -> Any:
        """Declare the raw queue as the first version's producers do; the channel to use.

        A queue that already exists with other arguments (this project's earlier
        versions declared `x-dead-letter-exchange`) makes RabbitMQ refuse the
        declaration and close the channel: it is then consumed as it is, on a new
        channel, after a passive declaration (which only checks that it exists).
        """
        try:
            self.queue(channel).declare()
            return channel
        except PreconditionFailed as exc:
            refusal = exc
        channel = channel.connection.channel()
        self.queue(channel).queue_declare(passive=True)
        logger.warning(
            "raw queue %s exists with other arguments than this version declares (%s): consuming it as it "
            "is, but first-version producers, which declare it durable with no arguments, are refused by "
            "RabbitMQ and publish nothing. To migrate, once it is empty delete it "
            "(rabbitmqctl delete_queue %s --if-empty, repeated until it succeeds): the worker re-declares "
            "it without arguments at once.",
            self.queue.name,
            refusal.reply_text,
            self.queue.name,
            extra={"queue": self.queue.name},
        )
        return channel

    def start(self, parent: Any) -> None:
        """Start consuming, and the timer that closes batches on time."""
        super().start(parent)
        self._tick = parent.timer.call_repeatedly(self.tick_seconds, self.on_tick)
        logger.info(
            "consuming raw pulses from %s (batch %d pulses / %d ms, prefetch %d)",
            self.queue.name,
            self.batch.max_pulses,
            self.batch.max_wait_seconds * 1000,
            self.prefetch_count,
        )

    def stop(self, parent: Any) -> None:
        """Warm shutdown: finish the open batch (or return it); reconnect: drop it."""
        self._cancel_tick(parent)
        if parent.blueprint.state == bootsteps.CLOSE:
            # Warm shutdown (SIGTERM): the channel is still open. Stop deliveries, then
            # count and ack what is held; if that fails, hand it back to the broker.
            for consumer in self.consumers or []:
                ignore_errors(parent.connection, consumer.cancel)
            self.finish_on_shutdown(parent)
        else:
            # The connection failed and Celery is reconnecting: our channel is gone,
            # and with it every unacked delivery, which RabbitMQ redelivers. Counting
            # them now could not be followed by an ack.
            self.batch.clear()
        self.dead_letters.close()
        super().stop(parent)

    def shutdown(self, parent: Any) -> None:
        """Cold shutdown: count nothing more; the broker redelivers what is unacked."""
        self._cancel_tick(parent)
        self.batch.clear()
        self.dead_letters.close()
        super().shutdown(parent)

    def on_message(self, message: Message) -> None:
        """Prepare one delivery and add it to the batch; flush when the batch is due."""
        try:
            prepared = prepare_message(
                message,
                message.body,
                message.properties.get("message_id"),
                validator=self.validator,
                max_body_bytes=self.max_body_bytes,
                received_at=datetime.now(UTC),
            )
        except UndecodableBody as exc:
            prepared = dead_letter_message(message, str(exc), exc.kind)
        except Exception as exc:  # a bug: never crash the loop, never count it
            logger.exception("raw message could not be prepared: dead-lettering it")
            prepared = dead_letter_message(message, f"could not be prepared: {exc!r}", "failed")
        now = time.monotonic()
        self.batch.add(prepared, now)
        if self.batch.is_due(now):
            self.flush()

    def on_tick(self) -> None:
        """Timer callback: close a batch that has waited long enough, retry a failed one,
        retry the raw queue while its node is down."""
        if self.batch.is_due(time.monotonic()):
            self.flush()
        if self.unavailable_on is not None and time.monotonic() >= self.next_declare_at:
            self.retry_unavailable_queue()

    def publish_dead_letters(self) -> None:
        """Publish the batch's dead letters to `pulses.dead`, each one confirmed.

        Raises `DeadLetterPublishFailed` at the first that is not: the batch stays
        unacked, and the retry goes on from that one (the published ones are done).
        """
        pending = self.batch.unpublished_dead_letters
        while pending:
            message = pending[0]
            handle, reason = message.handle, message.dead_letter or ""
            self.dead_letters.publish(
                body_bytes(handle.body, handle.properties.get("content_encoding")),
                properties=handle.properties,
                origin_queue=self.queue.name,
                reason=reason,
            )
            pending.pop(0)
            metrics.record_dead_letter("raw", message.dead_letter_kind)
            logger.warning(
                "raw message dead-lettered to pulses.dead: %s",
                reason,
                extra={"queue": self.queue.name, "delivery_tag": handle.delivery_tag},
            )

    def flush(self) -> bool:
        """Dead-letter what cannot count, count the batch, record its rejections, then
        ack it all; True if acked.

        A transient Redis/PostgreSQL error, or `pulses.dead` not confirming a dead
        letter, keeps the batch, unacked, for a retry with backoff: the retry reuses
        the same dedupe keys, so it counts nothing twice. Any other error dead-letters
        the batch's messages rather than retrying it forever. Broker errors (the ack)
        propagate: Celery reconnects and RabbitMQ redelivers.
        """
        batch = self.batch
        self.memory.check()
        started = time.perf_counter()
        try:
            self.publish_dead_letters()
            countable = batch.countable()
            counted = self.counter.count(countable) if countable else 0
            reasons = record_rejections_of_messages(
                self.database, source=self.source, messages=batch.rejections()
            )
        except RETRIED_ERRORS as exc:
            self._postpone(exc)
            return False
        except Exception as exc:  # a bug: dead-letter the batch, never retry it forever
            logger.exception("raw batch of %d message(s) failed: dead-lettering them", len(batch))
            batch.dead_letter_all(f"its batch failed: {exc!r}", "failed")
            try:
                self.publish_dead_letters()
            except Exception as failed:  # never crash the event loop: hold and retry
                self._postpone(failed)
                return False
            countable, counted, reasons = [], 0, []
        ack_through(batch.last())
        messages, pulses = len(batch), batch.pulse_count
        batch.clear()  # acked: from here nothing of it may be rejected or requeued
        # Rejections count once stored, before the ack (a redelivered batch counts them
        # again, though the table keeps them once: metrics are a rate, the table the record).
        metrics.record_rejections("raw", reasons)
        metrics.record_ingest("raw", counted, len(countable) - counted, time.perf_counter() - started)
        logger.info(
            "raw batch acked: messages=%d pulses=%d counted=%d duplicates=%d rejected=%d",
            messages,
            pulses,
            counted,
            len(countable) - counted,
            pulses - len(countable),
        )
        return True

    def finish_on_shutdown(self, parent: Any) -> None:
        """Count and ack the open batch; if that fails, requeue its messages."""
        if not len(self.batch):
            return
        try:
            if self.flush():
                return
        except Exception:  # shutting down: log, and let the broker redeliver
            logger.exception("raw batch could not be acked at shutdown")
        if self.batch.messages:
            logger.warning("raw batch of %d message(s) returned to the queue at shutdown", len(self.batch))
            for message in self.batch.messages:
                ignore_errors(parent.connection, reject, message.handle, requeue=True)
        self.batch.clear()

    def _postpone(self, exc: BaseException) -> None:
        delay = self.batch.postpone(time.monotonic())
        if is_out_of_memory(exc):  # a capacity incident: said loudly, held as long as it lasts
            self.memory.refused(
                "raw", exc, held=f"raw batch of {len(self.batch)} message(s) held unacked", retry_in=delay
            )
        logger.warning(
            "raw batch of %d message(s) not done (%r): held unacked, retry %d in %.1fs",
            len(self.batch),
            exc,
            self.batch.failures,
            delay,
        )

    def _cancel_tick(self, parent: Any) -> None:
        self.unavailable_on = None  # stopping: a restart declares the queue anew
        if self._tick is not None:
            parent.timer.cancel(self._tick)
            self._tick = None
