"""kombu's py-amqp transport, reading the socket ahead instead of frame by frame.

py-amqp's TCP transport asks the socket for exactly the bytes it needs next: the
7-byte frame header, then the payload. A small message is three frames (deliver,
header, body), so six `recv` system calls, each with its Python around it; profiling
the raw queue's consumer, frame reading was ~70% of its process. Asking for
`READ_AHEAD_BYTES` at a time instead lets one call bring in a dozen messages; the
surplus waits in the read buffer py-amqp already keeps for partial frames. The event
loop only sees the socket, not that buffer: the transport's reader therefore handles
every whole frame buffered before it returns (`Transport._make_reader`).

Celery uses it through `broker_transport` for plain `amqp://` URLs; `amqps://` keeps
py-amqp's SSL transport.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import Any

from amqp.exceptions import RecoverableConnectionError
from amqp.transport import TCPTransport
from kombu.transport import pyamqp

# Small enough that slicing the consumed bytes off the buffer stays cheap (a read copies
# what is left), large enough for a dozen small messages per system call.
READ_AHEAD_BYTES = 4096
# Type (1 byte), channel (2), payload size (4); the payload and a frame-end byte follow.
FRAME_HEADER_BYTES = 7
PLAIN_SCHEMES = ("amqp", "pyamqp")


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
            return self.on_inbound_frame(transport.read_frame())
        return super().blocking_read(timeout)

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
