"""Deliveries from the real RabbitMQ: taken whole from the read buffer, the same messages.

The same messages (small, large enough to span several body frames, with and without
properties and headers) are consumed through py-amqp's own transport and through the
read-ahead one; both must hand the consumer identical messages, and the read-ahead
one must have taken the small ones in one step.
"""

from __future__ import annotations

import uuid

import pytest
from kombu import Connection, Exchange, Queue

from ingestor.messaging import amqp_transport
from tests.support.services import BROKER_URL

pytestmark = pytest.mark.usefixtures("_services_ready")


def publish(queue: Queue) -> list[bytes]:
    bodies = [b'{"n": %d}' % n for n in range(300)]
    bodies.insert(100, b"x" * 300_000)  # over RabbitMQ's frame size: several body frames
    bodies.insert(200, b"")  # no body frame at all
    with Connection(BROKER_URL) as connection:
        producer = connection.Producer()
        for n, body in enumerate(bodies):
            producer.publish(
                body,
                exchange="",
                routing_key=queue.name,
                declare=[queue],
                content_type="application/json",
                content_encoding="binary",
                delivery_mode=n % 2 + 1,
                message_id=f"m-{n}" if n % 3 else None,
                headers={"x-n": n} if n % 5 == 0 else {},
                retry=True,
            )
    return bodies


def consume(transport: str | None, queue: Queue, count: int) -> list[tuple]:
    seen: list[tuple] = []
    with Connection(BROKER_URL, transport=transport) as connection:
        channel = connection.channel()
        channel.basic_qos(0, 100, False)

        def on_message(message) -> None:
            info = message.delivery_info
            seen.append((message.body, message.properties, info["routing_key"], info["redelivered"]))
            channel.basic_ack(info["delivery_tag"])

        channel.basic_consume(queue.name, callback=on_message)
        while len(seen) < count:
            connection.drain_events(timeout=10)
    return seen


def test_the_read_ahead_transport_delivers_what_py_amqp_delivers(monkeypatch):
    queue = Queue(f"deliveries-{uuid.uuid4().hex[:8]}", Exchange(""), durable=False, auto_delete=False)
    taken = []
    build = amqp_transport.delivered_message

    def counted_build(delivery, auto_decode: bool):
        taken.append(delivery.arguments[1])
        return build(delivery, auto_decode)

    # Called only for a delivery taken whole from the buffer.
    monkeypatch.setattr(amqp_transport, "delivered_message", counted_build)
    try:
        bodies = publish(queue)
        plain = consume("pyamqp", queue, len(bodies))
        publish(queue)
        read_ahead = consume(amqp_transport.TRANSPORT_PATH, queue, len(bodies))
    finally:
        with Connection(BROKER_URL) as connection:
            connection.default_channel.queue_delete(queue.name)

    # (py-amqp hands over "" for a message without a body.)
    assert [body or b"" for body, *_ in plain] == bodies
    assert read_ahead == plain
    # Most small deliveries were taken whole (the rest arrived in pieces).
    assert len(taken) > len(bodies) // 2
