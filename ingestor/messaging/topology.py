"""The RabbitMQ exchanges and queues: part of the API producers rely on.

Pulse tasks travel on the durable queue `pulses`, bound to the direct exchange
`pulses` with routing key `pulses`; what cannot be processed is dead-lettered to the
fanout exchange `pulses.dead` and kept in the queue `pulses.dead` for an operator.
The persist task has its own queue, so a flush never waits behind a million pulses.
The first version's producers publish bare JSON pulses through the default exchange
to the raw queue (`pulses.raw` unless RAW_QUEUE says otherwise), declared exactly as
they declare it: durable, no arguments. Its dead letters are published to `pulses.dead`
by the raw consumer itself (`ingestor.pulses.raw_consumer`), not through a queue argument.
A message published to an exchange with no matching queue is confirmed by RabbitMQ
and silently dropped: these names must not change.

BROKER_QUEUE_TYPE chooses the type of the three Celery task queues (`task_queues`).
"classic" (the default) is the topology above. "quorum" replicates them across a
RabbitMQ cluster, and changes three things Celery and RabbitMQ need of it: the
exchanges are topic exchanges (Celery's native delayed delivery, which carries a
countdown retry on quorum queues, binds only to topic exchanges; on a direct one a
retried task would hold the worker until its ETA), every queue has an explicit
`x-delivery-limit` and dead-letters to `pulses.dead` (RabbitMQ 4 drops a message
redelivered past its default limit of 20 unless it has somewhere to go).
"""

from __future__ import annotations

from typing import Any

from amqp.exceptions import PreconditionFailed
from kombu import Connection, Exchange, Queue

PULSES = "pulses"
PERSIST = "persist"
POPULATE = "populate"
DEAD_LETTERS = "pulses.dead"
# The default name of the raw pulse queue (RAW_QUEUE): bare JSON pulses published
# through the default exchange, with the queue name as routing key.
RAW_PULSES = "pulses.raw"

pulses_exchange = Exchange(PULSES, type="direct", durable=True)
dead_letter_exchange = Exchange(DEAD_LETTERS, type="fanout", durable=True)
persist_exchange = Exchange(PERSIST, type="direct", durable=True)

pulses_queue = Queue(
    PULSES,
    pulses_exchange,
    routing_key=PULSES,
    durable=True,
    queue_arguments={"x-dead-letter-exchange": DEAD_LETTERS},
)
dead_letter_queue = Queue(DEAD_LETTERS, dead_letter_exchange, routing_key=DEAD_LETTERS, durable=True)
persist_queue = Queue(PERSIST, persist_exchange, routing_key=PERSIST, durable=True)
# Fake-pulse generation for load and demos (POST /api/v1/pulses/populate), kept off
# the pulses queue so it never delays real pulses' tasks behind it.
populate_exchange = Exchange(POPULATE, type="direct", durable=True)
populate_queue = Queue(POPULATE, populate_exchange, routing_key=POPULATE, durable=True)


def raw_queue(name: str = RAW_PULSES) -> Queue:
    """The raw pulse queue `name`: durable, reached through the default exchange by
    its name (RabbitMQ binds every queue there implicitly), and no arguments.

    No arguments because the first version's producers declare it before every
    publish as durable with none, and RabbitMQ refuses (PRECONDITION_FAILED, closing
    the producer's channel) any declaration that differs from the queue's own.
    The worker consumes it with its own consumer step (`ingestor.pulses.raw_consumer`),
    not as a Celery task queue: its messages carry no Celery envelope.
    """
    return Queue(name, Exchange(""), routing_key=name, durable=True, auto_delete=False, exclusive=False)


raw_pulses_queue = raw_queue()

CLASSIC = "classic"
QUORUM = "quorum"
QUEUE_TYPES = (CLASSIC, QUORUM)
# Redeliveries of one message a quorum queue allows before it dead-letters it to
# pulses.dead (where an operator replays it): RabbitMQ 4's default, made explicit so
# that reaching it dead-letters instead of dropping, on RabbitMQ 3 as on 4.
DELIVERY_LIMIT = 20


class TopologyConflict(RuntimeError):
    """RabbitMQ holds a queue or exchange declared otherwise (another BROKER_QUEUE_TYPE)."""


def _quorum_queue(name: str) -> Queue:
    """The quorum version of the task queue `name`: topic exchange, delivery limit, DLX."""
    arguments: dict[str, Any] = {
        "x-queue-type": QUORUM,
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": DEAD_LETTERS,
    }
    return Queue(
        name,
        Exchange(name, type="topic", durable=True),
        routing_key=name,
        durable=True,
        queue_arguments=arguments,
    )


def dead_letter_queue_of(queue_type: str = CLASSIC) -> Queue:
    """`pulses.dead` as BROKER_QUEUE_TYPE `queue_type` declares it.

    With quorum task queues it is a quorum queue too: a classic queue lives on one
    node, and with that node down RabbitMQ refuses to declare it (404 "home node ...
    is down"), which every publisher and worker does on connecting: they could not
    fail over to the nodes left, and dead letters would have nowhere to go.
    """
    if queue_type == QUORUM:
        return Queue(
            DEAD_LETTERS,
            dead_letter_exchange,
            routing_key=DEAD_LETTERS,
            durable=True,
            queue_arguments={"x-queue-type": QUORUM},
        )
    return dead_letter_queue


def task_queues(queue_type: str = CLASSIC) -> tuple[Queue, Queue, Queue]:
    """The Celery task queues (pulses, persist, populate) of `queue_type`."""
    if queue_type == CLASSIC:
        return (pulses_queue, persist_queue, populate_queue)
    if queue_type == QUORUM:
        return (_quorum_queue(PULSES), _quorum_queue(PERSIST), _quorum_queue(POPULATE))
    raise ValueError(f"queue type must be one of {', '.join(QUEUE_TYPES)}, got {queue_type!r}")


def task_queue(name: str, queue_type: str = CLASSIC) -> Queue:
    """The task queue `name` (PULSES, PERSIST or POPULATE) of `queue_type`."""
    return next(queue for queue in task_queues(queue_type) if queue.name == name)


# The Celery task queues the worker consumes (the raw queue has a consumer step of
# its own); the dead-letter queue is only declared.
CONSUMED_QUEUES = (pulses_queue, persist_queue, populate_queue)
ALL_QUEUES = (*CONSUMED_QUEUES, raw_pulses_queue, dead_letter_queue)


def declare_topology(
    connection: Connection, raw_queue_name: str | None = RAW_PULSES, queue_type: str = CLASSIC
) -> None:
    """Declare every exchange, queue and binding (idempotent), dead letters first.

    The raw queue is declared under `raw_queue_name` (None: not at all, for a caller
    that declares it under its configured name itself); the task queues as
    `queue_type`. Raises TopologyConflict if RabbitMQ holds one declared otherwise.
    """
    channel = connection.default_channel
    raw = () if raw_queue_name is None else (raw_queue(raw_queue_name),)
    for queue in (dead_letter_queue_of(queue_type), *task_queues(queue_type), *raw):
        try:
            queue.bind(channel).declare()
        except PreconditionFailed as exc:
            raise conflict(queue, queue_type, exc) from exc


def conflict(queue: Queue, queue_type: str, exc: Exception) -> TopologyConflict:
    """The TopologyConflict of RabbitMQ refusing (406) to declare `queue` as `queue_type`."""
    return TopologyConflict(
        f"RabbitMQ refused to declare queue {queue.name!r} or its exchange as BROKER_QUEUE_TYPE={queue_type} "
        f"({exc}): they exist with another type or arguments. A queue cannot change type in place: drain it, "
        f"delete it and its exchange (rabbitmqctl delete_queue {queue.name}; delete the exchange in the "
        "management UI or rabbitmqadmin), then start the worker again, or set BROKER_QUEUE_TYPE back."
    )
