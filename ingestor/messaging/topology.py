"""The RabbitMQ exchanges and queues: part of the API producers rely on.

Pulse tasks travel on the durable queue `pulses`, bound to the direct exchange
`pulses` with routing key `pulses`; what cannot be processed is dead-lettered to the
fanout exchange `pulses.dead` and kept in the queue `pulses.dead` for an operator.
The persist task has its own queue, so a flush never waits behind a million pulses.
A message published to an exchange with no matching queue is confirmed by RabbitMQ
and silently dropped: these names must not change.
"""

from __future__ import annotations

from kombu import Connection, Exchange, Queue

PULSES = "pulses"
PERSIST = "persist"
DEAD_LETTERS = "pulses.dead"

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

# The queues the worker consumes; the dead-letter queue is only declared.
CONSUMED_QUEUES = (pulses_queue, persist_queue)
ALL_QUEUES = (*CONSUMED_QUEUES, dead_letter_queue)


def declare_topology(connection: Connection) -> None:
    """Declare every exchange, queue and binding (idempotent), dead letters first."""
    channel = connection.default_channel
    for queue in (dead_letter_queue, *CONSUMED_QUEUES):
        queue.bind(channel).declare()
