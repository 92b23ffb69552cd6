"""The first version's Go producer (streadway/amqp), replayed with pika: not kombu, not py-amqp.

Its exact sequence, per pulse: `QueueDeclare(name, durable=true, autoDelete=false,
exclusive=false, noWait=false, args=nil)`, then a publish of the bare JSON pulse to
the default exchange with the queue name as routing key, `ContentType:
application/json`, no DeliveryMode (transient), no message_id, no `id` field, and
`used_amount` written by Go's float64 encoder.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from decimal import Decimal

import pika

# pika logs every connection step at INFO.
logging.getLogger("pika").setLevel(logging.WARNING)


def go_float(value: float, *, json_cleanup: bool = False) -> str:
    """`value` as Go writes a float64: shortest round-trip text, exponent form below
    1e-6 and from 1e21 (`strconv.AppendFloat(..., 'e' or 'f', -1, 64)`).

    `json_cleanup`: encoding/json's extra step, `e-07` written `e-7`.
    """
    if value != 0 and (abs(value) < 1e-6 or abs(value) >= 1e21):
        text = repr(value)  # Python's repr is the same shortest form, e.g. 5e-07, 1e+21
        if json_cleanup and len(text) >= 4 and text[-4] == "e" and text[-3] == "-" and text[-2] == "0":
            text = text[:-2] + text[-1]
        return text
    return format(Decimal(repr(value)).normalize(), "f")


def go_pulse_body(tenant: str, product_sku: str, use_unity: str, amount_text: str) -> bytes:
    """A pulse as the Go struct marshals it: its field order, no spaces, no id, no timestamp."""
    fields = [
        ("tenant", json.dumps(tenant)),
        ("product_sku", json.dumps(product_sku)),
        ("use_unity", json.dumps(use_unity)),
        ("used_amount", amount_text),
    ]
    return ("{" + ",".join(f'"{name}":{value}' for name, value in fields) + "}").encode()


def publish_like_go(broker_url: str, queue: str, bodies: Iterable[bytes]) -> int:
    """Publish each body as the Go producer does (declare before every publish); how many.

    No publisher confirms, as in the Go producer: the queue_declare round trip after
    each publish (AMQP keeps a channel's methods in order) and the clean close are
    what tell that RabbitMQ took them.
    """
    published = 0
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        for body in bodies:
            channel.queue_declare(
                queue=queue, durable=True, exclusive=False, auto_delete=False, arguments=None
            )
            channel.basic_publish(
                exchange="",
                routing_key=queue,
                body=body,
                properties=pika.BasicProperties(content_type="application/json"),
            )
            published += 1
        channel.queue_declare(queue=queue, durable=True, exclusive=False, auto_delete=False, arguments=None)
    finally:
        connection.close()
    return published
