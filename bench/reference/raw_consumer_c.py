"""The raw queue's reference consumer on librabbitmq (the rabbitmq-c library, in C).

Usage: python raw_consumer_c.py HOST:PORT USER PASSWORD VHOST QUEUE MESSAGES PREFETCH ACK_EVERY

The least a consumer can do, as bench/reference/raw_consumer.js on Node: decode each
body as JSON, ack every ACK_EVERY messages with multiple=True, with the raw
consumer's prefetch. Prints {"messages": n, "seconds": s, "rate": r}, timed from the
first delivery to the last. Run by the bench with librabbitmq-fork installed into
the git-ignored bench/.reference/python (not a dependency of the project).
"""

from __future__ import annotations

import json
import sys
import time

from librabbitmq import Connection  # type: ignore[import-not-found]


def main(argv: list[str]) -> None:
    """Consume MESSAGES messages from QUEUE and print the rate."""
    host, user, password, vhost, queue = argv[:5]
    expected, prefetch, ack_every = (int(value) for value in argv[5:8])
    connection = Connection(host=host, userid=user, password=password, virtual_host=vhost)
    channel = connection.channel()
    channel.basic_qos(prefetch_size=0, prefetch_count=prefetch, _global=False)
    seen = unacked = 0
    first = last = 0.0

    def on_message(message: object) -> None:
        nonlocal seen, unacked, first, last
        if seen == 0:
            first = time.perf_counter()
        json.loads(bytes(message.body))  # type: ignore[attr-defined]  # a memoryview
        seen += 1
        unacked += 1
        if unacked >= ack_every or seen == expected:
            channel.basic_ack(message.delivery_info["delivery_tag"], multiple=True)  # type: ignore[attr-defined]
            unacked = 0
        if seen == expected:
            last = time.perf_counter()

    channel.basic_consume(queue, callback=on_message)
    while seen < expected:
        connection.drain_events(timeout=60)
    seconds = last - first
    # The first delivery starts the clock: n - 1 messages arrived in that time.
    print(json.dumps({"messages": seen, "seconds": seconds, "rate": (seen - 1) / seconds}))
    connection.close()


if __name__ == "__main__":
    main(sys.argv[1:])
