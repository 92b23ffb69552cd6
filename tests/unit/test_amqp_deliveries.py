"""Deliveries taken whole from the read buffer: exactly what py-amqp's own path builds."""

from __future__ import annotations

import struct

import pytest
from amqp.basic_message import Message
from amqp.method_framing import frame_handler
from amqp.serialization import dumps

from ingestor.messaging.amqp_transport import (
    BASIC_DELIVER,
    delivered_message,
    parse_buffered_delivery,
)


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


def deliver_frames(
    body: bytes,
    properties: dict,
    *,
    channel: int = 1,
    args: tuple = ("ctag-1", 7, False, "", "pulses.raw"),
    body_frames: int = 1,
) -> bytes:
    """basic.deliver, its content header and body frame(s), serialized by py-amqp itself."""
    method = struct.pack(">HH", *BASIC_DELIVER) + dumps("sLbss", list(args))
    header = struct.pack(">HHQ", 60, 0, len(body)) + Message(**properties)._serialize_properties()
    frames = frame(1, channel, method) + frame(2, channel, header)
    if body:
        cut = len(body) // body_frames
        pieces = [body[i * cut : (i + 1) * cut if i < body_frames - 1 else None] for i in range(body_frames)]
        frames += b"".join(frame(3, channel, piece) for piece in pieces)
    return frames


def through_py_amqp(buffer: bytes) -> tuple[int, tuple, Message]:
    """(channel, deliver arguments, message) as py-amqp's frame handler and channel decode them."""
    from amqp.serialization import loads

    handled = []

    def on_method(channel, method_sig, payload, content):
        args, _ = loads("sLbss", payload, 4)
        handled.append((channel, tuple(args), content))

    class Counting:
        bytes_recv = 0

    on_frame = frame_handler(Counting(), on_method)
    offset = 0
    while offset < len(buffer):
        _, channel, size = struct.unpack_from(">BHI", buffer, offset)
        on_frame((buffer[offset], channel, buffer[offset + 7 : offset + 7 + size]))
        offset += 7 + size + 1
    [result] = handled
    return result


CASES = [
    (b'{"tenant": "acme"}', {}),
    (b'{"tenant": "acme"}', {"content_type": "application/json", "delivery_mode": 2}),
    (
        b"[1, 2]",
        {
            "content_type": "application/json",
            "message_id": "m-1/\u00e9",
            "application_headers": {"x-a": "b", "n": 3},
            "priority": 4,
            "timestamp": 1700000000,
            "app_id": "producer",
        },
    ),
    (b"", {"delivery_mode": 1}),
    ("caf\u00e9".encode(), {"content_encoding": "utf-8"}),
    (b"\xff\xfe", {"content_encoding": "utf-8"}),  # not decodable: bytes kept, as py-amqp does
]


@pytest.mark.parametrize(("body", "properties"), CASES)
@pytest.mark.parametrize(
    "args", [("ctag-1", 7, False, "", "pulses.raw"), ("c", 2**40, True, "ex", "k/\u00e9")]
)
def test_a_buffered_delivery_is_what_py_amqp_builds(body, properties, args):
    buffer = deliver_frames(body, properties, channel=3, args=args)
    channel, expected_args, expected = through_py_amqp(buffer)

    delivery = parse_buffered_delivery(buffer + b"\x01more")

    assert delivery is not None
    assert delivery.size == len(buffer)
    assert (delivery.channel_id, delivery.arguments) == (channel, expected_args)
    assert delivery.frames == (3 if body else 2)
    for auto_decode in (False, True):
        message = delivered_message(delivery, auto_decode)
        assert message.properties == expected.properties
        wanted = expected.body
        if auto_decode and "content_encoding" in properties:
            try:
                wanted = wanted.decode(properties["content_encoding"])
            except UnicodeDecodeError:
                pass
        assert message.body == wanted
        assert type(message.body) is type(wanted)


def test_only_whole_deliveries_are_taken():
    whole = deliver_frames(b'{"a": 1}', {"content_type": "application/json"})
    for cut in range(len(whole)):
        assert parse_buffered_delivery(whole[:cut]) is None, cut
    assert parse_buffered_delivery(whole) is not None


@pytest.mark.parametrize(
    "buffer",
    [
        # A body in two frames: py-amqp assembles it.
        deliver_frames(b'{"a": 1, "b": 2}', {}, body_frames=2),
        # Another method on the channel (basic.ack, 60/80).
        frame(1, 1, struct.pack(">HHQB", 60, 80, 5, 0)),
        # A header frame first (py-amqp is waiting for it on some channel).
        deliver_frames(b"x", {})[
            len(frame(1, 1, b"")) + len(dumps("sLbss", ["ctag-1", 7, False, "", "pulses.raw"])) + 4 :
        ],
        # A wrong frame-end octet: py-amqp raises its error.
        deliver_frames(b"x", {}).replace(b"\xce", b"\x00", 1),
        # The header on another channel than the method.
        frame(1, 1, struct.pack(">HH", *BASIC_DELIVER) + dumps("sLbss", ["c", 1, False, "", "q"]))
        + frame(2, 2, struct.pack(">HHQ", 60, 0, 1) + Message()._serialize_properties())
        + frame(3, 2, b"x"),
        # A heartbeat.
        frame(8, 0, b""),
    ],
)
def test_anything_else_is_left_to_py_amqp(buffer):
    assert parse_buffered_delivery(buffer) is None
