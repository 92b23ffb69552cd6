"""kombu's py-amqp transport, reading the socket ahead instead of frame by frame.

py-amqp's TCP transport asks the socket for exactly the bytes it needs next: the
7-byte frame header, then the payload. A small message is three frames (deliver,
header, body), so six `recv` system calls, each with its Python around it; profiling
the raw queue's consumer, frame reading was ~70% of its process. Asking for
`READ_AHEAD_BYTES` at a time instead lets one call bring in a dozen messages; the
surplus waits in the read buffer py-amqp already keeps for partial frames. The event
loop only sees the socket, not that buffer: the transport's reader therefore handles
every whole frame buffered before it returns (`Transport._make_reader`).

A delivery whose three frames (basic.deliver, content header, one body frame) are all
buffered is then taken in one step (`parse_buffered_delivery`): py-amqp's frame,
method and header parsing, a generic interpreter of the AMQP grammar, was ~35% of the
raw consumer's process once the reads were batched. Anything else (another method, a
body in several frames, a frame not whole yet) goes through py-amqp as before.

Celery uses it through `broker_transport` for plain `amqp://` URLs; `amqps://` keeps
py-amqp's SSL transport.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from dataclasses import dataclass
from struct import unpack_from
from typing import Any

from amqp.basic_message import Message
from amqp.exceptions import RecoverableConnectionError
from amqp.serialization import decode_properties_basic
from amqp.transport import TCPTransport
from kombu.transport import pyamqp

# Small enough that slicing the consumed bytes off the buffer stays cheap (a read copies
# what is left), large enough for a dozen small messages per system call.
READ_AHEAD_BYTES = 4096
# Type (1 byte), channel (2), payload size (4); the payload and a frame-end byte follow.
FRAME_HEADER_BYTES = 7
PLAIN_SCHEMES = ("amqp", "pyamqp")
# AMQP 0-9-1: frame types, the frame-end octet, basic.deliver's (class, method).
METHOD_FRAME, HEADER_FRAME, BODY_FRAME, FRAME_END = 1, 2, 3, 0xCE
BASIC_DELIVER = (60, 60)


class ReadAheadTCPTransport(TCPTransport):
    """py-amqp's TCP transport, with `_read` asking the socket for a buffer's worth."""

    _read_buffer: bytes  # py-amqp's own, set when it connects

    def _read(
        self, n: int, initial: bool = False, _errnos: tuple[int, ...] = (errno.EAGAIN, errno.EINTR)
    ) -> bytes:
        """Exactly `n` bytes: from the buffer, topped up by reads of at least READ_AHEAD_BYTES."""
        # py-amqp's TCPTransport._read with one change: recv(max(missing, READ_AHEAD_BYTES)).
        recv = self._quick_recv
        rbuf = self._read_buffer
        try:
            while len(rbuf) < n:
                try:
                    s = recv(max(n - len(rbuf), READ_AHEAD_BYTES))
                except OSError as exc:
                    if exc.errno in _errnos:
                        if initial and self.raise_on_initial_eintr:
                            raise TimeoutError() from exc
                        continue
                    raise
                if not s:
                    raise OSError("Server unexpectedly closed connection")
                rbuf += s
        except:
            self._read_buffer = rbuf
            raise
        result, self._read_buffer = rbuf[:n], rbuf[n:]
        return result


def holds_a_frame(transport: Any) -> bool:
    """Whether a whole frame waits in the transport's read buffer (header, payload, end)."""
    buffered = transport._read_buffer
    return len(buffered) >= FRAME_HEADER_BYTES and len(buffered) > FRAME_HEADER_BYTES + int.from_bytes(
        buffered[3:FRAME_HEADER_BYTES], "big"
    )


@dataclass(frozen=True)
class BufferedDelivery:
    """A basic.deliver with its content, parsed from whole frames in a read buffer."""

    size: int  # bytes of the buffer it took: its two or three frames
    channel_id: int
    method_args: bytes  # the method frame's payload, kept as py-amqp keeps it
    # basic.deliver's arguments, in their order: consumer_tag, delivery_tag,
    # redelivered, exchange, routing_key.
    arguments: tuple[str, int, bool, str, str]
    properties: dict[str, Any]
    body: bytes | str  # "" without a body frame, as py-amqp's Message has it
    frames: int


def _short_string(buffer: bytes, offset: int) -> tuple[str, int]:
    """An AMQP shortstr at `offset` (length octet, UTF-8 bytes), as py-amqp decodes it; next offset."""
    end = offset + 1 + buffer[offset]
    return buffer[offset + 1 : end].decode("utf-8", "surrogatepass"), end


def _whole_frame(buffer: bytes, offset: int, frame_type: int, channel_id: int | None) -> int | None:
    """The end offset of a whole frame of this type (and channel) at `offset`, or None."""
    if len(buffer) < offset + FRAME_HEADER_BYTES or buffer[offset] != frame_type:
        return None
    channel, size = unpack_from(">HI", buffer, offset + 1)
    end = offset + FRAME_HEADER_BYTES + size
    if (channel_id is not None and channel != channel_id) or len(buffer) <= end or buffer[end] != FRAME_END:
        return None
    return end


def parse_buffered_delivery(buffer: bytes) -> BufferedDelivery | None:
    """The basic.deliver at the start of `buffer` when its frames are all there, else None.

    None for anything py-amqp's own path must handle: another frame or method, a frame
    not whole yet or malformed (py-amqp raises its errors), a body in several frames.
    """
    method_end = _whole_frame(buffer, 0, METHOD_FRAME, None)
    if method_end is None or unpack_from(">HH", buffer, FRAME_HEADER_BYTES) != BASIC_DELIVER:
        return None
    (channel_id,) = unpack_from(">H", buffer, 1)
    header_at = method_end + 1
    header_end = _whole_frame(buffer, header_at, HEADER_FRAME, channel_id)
    if header_end is None:
        return None
    # Header payload: class id, weight, body size, then the property flags and list.
    (body_size,) = unpack_from(">Q", buffer, header_at + FRAME_HEADER_BYTES + 4)
    properties, _ = decode_properties_basic(buffer, header_at + FRAME_HEADER_BYTES + 12)
    end, frames = header_end + 1, 2
    body: bytes | str = ""
    if body_size:
        body_end = _whole_frame(buffer, end, BODY_FRAME, channel_id)
        if body_end is None or body_end - end - FRAME_HEADER_BYTES != body_size:
            return None  # not here yet, or a body in several frames: py-amqp assembles it
        end, frames, body = body_end + 1, 3, buffer[end + FRAME_HEADER_BYTES : body_end]
    consumer_tag, offset = _short_string(buffer, FRAME_HEADER_BYTES + 4)
    (delivery_tag,) = unpack_from(">Q", buffer, offset)
    redelivered = buffer[offset + 8] & 1 == 1
    exchange, offset = _short_string(buffer, offset + 9)
    routing_key, _ = _short_string(buffer, offset)
    return BufferedDelivery(
        size=end,
        channel_id=channel_id,
        method_args=buffer[FRAME_HEADER_BYTES:method_end],
        arguments=(consumer_tag, delivery_tag, redelivered, exchange, routing_key),
        properties=properties,
        body=body,
        frames=frames,
    )


def delivered_message(delivery: BufferedDelivery, auto_decode: bool) -> Message:
    """py-amqp's Message for `delivery`, as its frame handler and channel would build it."""
    message = Message(frame_method=BASIC_DELIVER, frame_args=delivery.method_args)
    message.properties = delivery.properties
    message.body = delivery.body
    message.body_size = message.body_received = len(delivery.body)
    message.ready = True
    encoding = delivery.properties.get("content_encoding")
    if auto_decode and encoding is not None and isinstance(delivery.body, bytes):
        try:  # py-amqp's channel does the same, silently keeping bytes it cannot decode
            message.body = delivery.body.decode(encoding)
        except Exception:  # as py-amqp: any failure keeps the bytes
            pass
    return message


class Connection(pyamqp.Connection):
    """kombu's py-amqp connection, on a read-ahead transport unless it is SSL."""

    def blocking_read(self, timeout: float | None = None) -> Any:
        """Read and handle one frame, straight from the buffer when it holds one.

        py-amqp sets the socket's timeout before each frame and restores it after: two
        system calls per frame (a quarter of the raw consumer's process in a profile,
        once the reads themselves were batched). A frame already buffered needs no
        socket, so no timeout.
        """
        transport = self.transport
        if holds_a_frame(transport):
            # True, as py-amqp's frame handler answers for a whole message: drain_events
            # reads until one is.
            if self._take_buffered_delivery(transport):
                return True
            return self.on_inbound_frame(transport.read_frame())
        return super().blocking_read(timeout)

    def _take_buffered_delivery(self, transport: ReadAheadTCPTransport) -> bool:
        """Hand a wholly buffered basic.deliver to its channel's consumer; False to let py-amqp.

        What py-amqp's frame handler and `dispatch_method` would do for it, in one
        step. A channel closing or waiting for a delivery synchronously goes the
        long way, which knows those cases.
        """
        delivery = parse_buffered_delivery(transport._read_buffer)
        if delivery is None:
            return False
        channel = (self.channels or {}).get(delivery.channel_id)
        if channel is None or channel.is_closing or BASIC_DELIVER in channel._pending:
            return False
        on_deliver = channel._callbacks.get(BASIC_DELIVER)
        transport._read_buffer = transport._read_buffer[delivery.size :]
        self.bytes_recv += delivery.frames  # the heartbeat check counts frames received
        if on_deliver is not None:
            on_deliver(*delivery.arguments, delivered_message(delivery, channel.auto_decode))
        return True

    def Transport(  # py-amqp's name
        self,
        host: str,
        connect_timeout: float | None,
        ssl: Any = False,
        read_timeout: float | None = None,
        write_timeout: float | None = None,
        socket_settings: dict | None = None,
        **kwargs: Any,
    ) -> Any:
        """The socket transport py-amqp connects with (py-amqp's own for SSL)."""
        timeouts = {
            "read_timeout": read_timeout,
            "write_timeout": write_timeout,
            "socket_settings": socket_settings,
        }
        if ssl:
            return super().Transport(host, connect_timeout, ssl, **timeouts, **kwargs)
        return ReadAheadTCPTransport(host, connect_timeout=connect_timeout, **timeouts, **kwargs)


class Transport(pyamqp.Transport):
    """kombu's py-amqp transport with the read-ahead connection."""

    Connection = Connection

    def _make_reader(
        self,
        connection: Any,  # our Connection: a py-amqp connection
        timeout: type[BaseException] = socket.timeout,
        error: type[OSError] = OSError,
        _unavail: tuple[int, ...] = (errno.EAGAIN, errno.EINTR),
    ) -> Callable[[Any], None]:
        """The event loop's callback for a readable socket: kombu's, draining the buffer too.

        kombu's reader handles one message, then queues itself with `call_soon`; but the
        loop polls before it runs what was queued, and only wakes early for a socket the
        kernel says is readable. Frames already in our buffer are invisible to the
        kernel: they waited a poll timeout each (up to a second, or ten). So every whole
        frame buffered is handled before returning; a partial one waits for the rest of
        its bytes, which wake the poll.
        """
        drain_events = connection.drain_events

        def _read(loop: Any) -> None:
            if not connection.connected:
                raise RecoverableConnectionError("Socket was disconnected")
            try:
                drain_events(timeout=0)
                while holds_a_frame(connection.transport):
                    drain_events(timeout=0)
            except timeout:
                return
            except error as exc:
                if exc.errno in _unavail:
                    return
                raise
            loop.call_soon(_read, loop)

        return _read


TRANSPORT_PATH = f"{__name__}:Transport"


def transport_for(broker_url: str) -> str | None:
    """The kombu transport for `broker_url`: the read-ahead one for plain AMQP, else kombu's choice."""
    scheme = broker_url.partition("://")[0].lower()
    return TRANSPORT_PATH if scheme in PLAIN_SCHEMES else None
