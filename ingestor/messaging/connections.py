"""kombu connections that keep the transport they were given when they fail over.

`BROKER_URL` may list several nodes (`amqp://a//;amqp://b//`). When one dies, kombu
switches the connection to the next URL by parsing it again, and the parsed scheme,
"amqp", replaces the transport given at construction: the worker went on with
py-amqp's own transport, reading the socket 7 bytes at a time (see amqp_transport),
for as long as it ran on the second node. This connection class puts the chosen
transport back when the next URL is one it serves.
"""

from __future__ import annotations

from celery.app.amqp import AMQP
from kombu import Connection

from ingestor.messaging.amqp_transport import transport_for


class FailoverConnection(Connection):
    """A kombu `Connection` that keeps its transport across a failover to the next node."""

    def switch(self, conn_str: str) -> None:
        """Switch to `conn_str` (see kombu), keeping the transport given at construction."""
        chosen = self._initial_params.get("transport")
        super().switch(conn_str)
        if chosen is not None and "://" in conn_str and transport_for(conn_str) == chosen:
            self.transport_cls = chosen


class IngestorAMQP(AMQP):
    """Celery's AMQP helpers, making `FailoverConnection`s."""

    Connection = FailoverConnection
    BrokerConnection = FailoverConnection
