"""A TCP proxy the test controls, to cut the ingestor off a service and give it back.

The machine's PostgreSQL, Redis and RabbitMQ must keep running (other test runs use
them), so a fault test never stops them: it points the process under test at a
`TcpProxy` on 127.0.0.1:<ephemeral port> that forwards to the real service, and cuts
that instead. `cut()` resets every live connection (both ends get a TCP RST, as when
a network path or the server dies) and resets every new one at once until
`restore()`. The listening socket stays open through a cut, so the port cannot be
taken by another process meanwhile: a client sees "connection reset" rather than
"connection refused", which every client under test treats as the same outage.

`BlackHole` is the other kind of outage: a port that takes connections and never
answers, as a firewall dropping packets or a dead host looks to a client.

Threads, one per direction of each connection: the proxies of a test carry a few
dozen connections at most, and blocking sockets keep the forwarding obvious.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

_CHUNK = 64 * 1024
# SO_LINGER on, timeout 0: close() sends a RST instead of a graceful FIN.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


def _reset(sock: socket.socket) -> None:
    """Close `sock` with a TCP reset; ignore a socket that is already gone."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    except OSError:
        pass
    # close() alone does not end a connection a pump thread is blocked reading: the
    # blocked recv keeps the socket alive, so a peer that waits in silence (PostgreSQL
    # idle in a transaction) never heard of the cut and held its locks. shutdown()
    # wakes that recv.
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _with_port(url: str, port: int) -> str:
    """`url` with its host and port replaced by 127.0.0.1:`port` (credentials, path kept)."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target` until cut; use as a context manager."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._open = True
        self._stopped = False
        # How many connections were accepted and forwarded: lets a test check that
        # the process under test really went through the proxy.
        self.connections = 0
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"proxy-{self.port}", daemon=True)
        self._acceptor.start()

    @classmethod
    def for_url(cls, url: str, default_port: int) -> TcpProxy:
        """A proxy to the host and port of a service URL (redis://, amqp://, postgresql://)."""
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or default_port)

    def url(self, url: str) -> str:
        """`url` with its host and port replaced by this proxy's (credentials, path kept)."""
        return _with_port(url, self.port)

    @property
    def is_cut(self) -> bool:
        return not self._open

    def cut(self) -> None:
        """Reset every live connection, and every new one until `restore()`."""
        with self._lock:
            self._open = False
            pairs, self._pairs = self._pairs, set()
        for client, upstream in pairs:
            _reset(client)
            _reset(upstream)

    def restore(self) -> None:
        """Forward new connections again."""
        with self._lock:
            self._open = True

    @contextmanager
    def outage(self) -> Iterator[None]:
        """Cut for the duration of the block, restore after it (even on failure)."""
        self.cut()
        try:
            yield
        finally:
            self.restore()

    def close(self) -> None:
        """Stop accepting, reset every connection, join the accept thread."""
        self._stopped = True
        self.cut()
        # Wake the accept loop: shutdown() makes a blocked accept() fail at once.
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        self._acceptor.join(timeout=5)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            if not self._open:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = (client, upstream)
            with self._lock:
                if not self._open:  # cut while we were connecting
                    _reset(client)
                    _reset(upstream)
                    continue
                self._pairs.add(pair)
                self.connections += 1
            for source, sink in (pair, pair[::-1]):
                threading.Thread(target=self._pump, args=(source, sink, pair), daemon=True).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        try:
            while data := source.recv(_CHUNK):
                sink.sendall(data)
        except OSError:
            pass
        # One side closed or failed: close the pair (none of the protocols here half-close).
        with self._lock:
            owned = pair in self._pairs
            self._pairs.discard(pair)
        if owned:
            for sock in pair:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()


class BlackHole:
    """A port on 127.0.0.1 that takes TCP connections and never says a word.

    What a client meets when a firewall drops packets or a host died without a reset:
    the kernel completes the handshake (the socket listens) but nothing ever accepts
    the connection, so no byte comes back and no FIN or RST either; once the backlog
    is full, even the handshake goes unanswered. Only a client's own timeout ends it.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=8)
        self.port: int = self._listener.getsockname()[1]

    def url(self, url: str) -> str:
        """`url` with its host and port replaced by this black hole's (credentials, path kept)."""
        return _with_port(url, self.port)

    def close(self) -> None:
        """Stop listening (the connections waiting in the backlog get a reset)."""
        self._listener.close()

    def __enter__(self) -> BlackHole:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
