"""The read-ahead AMQP transport, on a real socket pair: same frames, fewer reads."""

from __future__ import annotations

import socket
import struct
import time

import pytest
from kombu.asynchronous.hub import Hub

from ingestor.celery_app import celery_config
from ingestor.messaging.amqp_transport import (
    TRANSPORT_PATH,
    ReadAheadTCPTransport,
    Transport,
    holds_a_frame,
    transport_for,
)
from ingestor.settings import Settings


def frame(payload: bytes, channel: int = 1, kind: int = 3) -> bytes:
    """One AMQP frame: type, channel, payload size, payload, frame-end byte."""
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


@pytest.fixture
def transport_and_peer():
    ours, peer = socket.socketpair()
    transport = ReadAheadTCPTransport("localhost:5672")
    transport.sock = ours
    transport._setup_transport()
    recv_calls = []
    real_recv = transport._quick_recv

    def counted_recv(size: int) -> bytes:
        recv_calls.append(size)
        return real_recv(size)

    transport._quick_recv = counted_recv
    yield transport, peer, recv_calls
    ours.close()
    peer.close()


def test_many_frames_come_in_with_few_reads_and_intact(transport_and_peer):
    transport, peer, recv_calls = transport_and_peer
    payloads = [b"body %d " % n * (n % 5 + 1) for n in range(30)]
    peer.sendall(b"".join(frame(p) for p in payloads))

    read = [transport.read_frame() for _ in payloads]

    assert [(kind, channel, payload) for kind, channel, payload in read] == [(3, 1, p) for p in payloads]
    # py-amqp's own transport makes two reads per frame: 60 here.
    assert len(recv_calls) <= 2


def test_a_frame_bigger_than_the_read_ahead_is_read_whole(transport_and_peer):
    transport, peer, _ = transport_and_peer
    big = bytes(range(256)) * 100  # 25,600 bytes
    peer.sendall(frame(big) + frame(b"next"))

    assert transport.read_frame() == (3, 1, big)
    assert transport.read_frame() == (3, 1, b"next")


def test_a_header_cut_in_two_times_out_then_completes(transport_and_peer):
    """As on the worker's event loop (kombu sets raise_on_initial_eintr), with timeout 0."""
    transport, peer, _ = transport_and_peer
    transport.raise_on_initial_eintr = True
    whole = frame(b"x" * 100)
    peer.sendall(whole[:5])

    with pytest.raises(socket.timeout), transport.having_timeout(0):
        transport.read_frame()
    assert transport._read_buffer == whole[:5]  # kept for the next read, not lost
    peer.sendall(whole[5:])

    with transport.having_timeout(0):
        assert transport.read_frame() == (3, 1, b"x" * 100)


@pytest.mark.parametrize(
    ("buffered", "whole"),
    [
        (b"", False),
        (frame(b"abc")[:6], False),
        (frame(b"abc")[:-1], False),
        (frame(b"abc"), True),
        (frame(b"abc") + frame(b"d")[:3], True),
        (frame(b""), True),
    ],
)
def test_holds_a_frame_only_when_one_is_whole(transport_and_peer, buffered, whole):
    transport, _, _ = transport_and_peer
    transport._read_buffer = buffered

    assert holds_a_frame(transport) is whole


@pytest.mark.parametrize(
    ("url", "transport"),
    [
        ("amqp://guest:guest@localhost:5672//", TRANSPORT_PATH),
        ("AMQP://h//", TRANSPORT_PATH),
        ("pyamqp://h//", TRANSPORT_PATH),
        ("amqps://h//", None),
        ("redis://h/0", None),
    ],
)
def test_only_plain_amqp_gets_the_read_ahead_transport(url, transport):
    assert transport_for(url) == transport


def test_the_worker_is_configured_with_it():
    assert celery_config(Settings())["broker_transport"] == TRANSPORT_PATH
    assert celery_config(Settings(broker_url="amqps://h//"))["broker_transport"] is None


class FrameByFrameConnection:
    """What the reader needs of a py-amqp connection: drain_events handles one frame."""

    connected = True

    def __init__(self, transport: ReadAheadTCPTransport) -> None:
        self.transport = transport
        self.handled: list[tuple[float, bytes]] = []
        self.started = time.monotonic()

    def drain_events(self, timeout: float | None = None) -> None:
        with self.transport.having_timeout(timeout):
            _, _, payload = self.transport.read_frame()
        self.handled.append((time.monotonic() - self.started, payload))


def test_frames_read_ahead_are_handled_without_waiting_for_the_socket(transport_and_peer):
    """On kombu's real event loop: the poll cannot see our buffer, only the socket."""
    transport, peer, _ = transport_and_peer
    transport.raise_on_initial_eintr = True  # as kombu sets it on the event loop
    connection = FrameByFrameConnection(transport)
    hub = Hub()
    hub.add_reader(transport.sock, Transport(client=None).on_readable, connection, hub)
    payloads = [b"message %d" % n for n in range(8)]
    peer.sendall(b"".join(frame(p) for p in payloads))

    loop = hub.create_loop()
    while len(connection.handled) < len(payloads) and time.monotonic() - connection.started < 5:
        next(loop)
    hub.close()

    assert [payload for _, payload in connection.handled] == payloads
    # kombu's own reader handles one per poll timeout here (1 s each): 7 s.
    assert connection.handled[-1][0] < 0.5
