"""The first version's producers, unchanged, against the worker: pika replays the Go producer.

Both start orders (the producer creates `pulses.raw` and fills it before any worker
exists; the worker is up first), a queue left by this project's earlier version with
its `x-dead-letter-exchange` argument, and dead letters the consumer publishes itself
(the queue has no argument that could do it), sums checked against a Decimal ledger.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import time
from decimal import Decimal

import pika
import pytest
from kombu import Connection, Exchange, Queue
from sqlalchemy import text

from ingestor.messaging.dead_letters import ORIGIN_QUEUE_HEADER, REASON_HEADER, replay_dead_letters
from ingestor.messaging.topology import DEAD_LETTERS, dead_letter_exchange, raw_queue
from tests.support.go_producer import go_float, go_pulse_body, publish_like_go
from tests.support.ledger import Ledger, hour_ago, persisted_sums_per_group
from tests.support.raw import body_of, dead_letter_messages
from tests.support.services import RABBITMQ_VHOST
from tests.support.worker import WorkerProcess, queue_counts, wait_until_idle, wait_until_settled

pytestmark = pytest.mark.usefixtures("clean_state")

RAW = "pulses.raw"
GARBAGE = [b'{"tenant": "broken json', b"\xff\xfe not utf-8", b'"a string"', b""]


@pytest.fixture
def no_raw_queue(settings):
    """No `pulses.raw` in the test vhost before the test; one the way producers declare it after."""
    with Connection(settings.broker_url) as connection:
        connection.default_channel.queue_delete(RAW)
    yield
    with Connection(settings.broker_url) as connection:
        channel = connection.default_channel
        channel.queue_delete(RAW)
        raw_queue(RAW).bind(channel).declare()


@pytest.fixture
def start_worker(settings, producer):
    started: list[WorkerProcess] = []

    def start(name: str) -> WorkerProcess:
        process = WorkerProcess(settings, name)
        started.append(process)
        process.start(producer)
        return process

    yield start
    for process in started:
        process.stop()


def go_pulses(ledger: Ledger, count: int, tenant: str, rng: random.Random) -> list[bytes]:
    """`count` pulses as the Go producer writes them: float amounts, some in exponent form."""
    bodies = []
    for i in range(count):
        micro_units = rng.choice(
            [rng.randrange(1, 10**7), rng.randrange(1, 10**12), 1, 10**6 * rng.randrange(1, 50)]
        )
        amount = micro_units / 10**6  # a float64, as the producer holds it
        text_ = go_float(amount)
        sku = f"sku{i % 3}"
        bodies.append(go_pulse_body(tenant, sku, "GB", text_))
        # The ledger takes the decimal the text means; what the float was is irrelevant.
        ledger.add(tenant, sku, "GB", hour_ago(0), Decimal(text_))
    # Exponent forms of amounts within six fractional digits (1.5e-05 is 0.000015)...
    for text_ in ("1.5e-05", "2.5E-05", "1e+01"):
        bodies.append(go_pulse_body(tenant, "exp", "GB", text_))
        ledger.add(tenant, "exp", "GB", hour_ago(0), Decimal(text_))
    return bodies


# What a float encoder writes that this ingestor will not bill unrounded: rejected.
TOO_FINE = ["5e-07", "5e-7", "0.30000000000000004", go_float(0.1 + 0.2)]


def persist_through_the_worker(producer, worker: WorkerProcess) -> None:
    producer.send_task("ingestor.persist_pulses", exchange="persist", routing_key="persist")
    wait_until_idle(producer, worker, ("persist",))


def rejected_amount_rows(database) -> list[str]:
    with database.engine.connect() as connection:
        rows = connection.execute(text("SELECT source, errors FROM rejected_pulse ORDER BY id")).all()
    assert all(row.source == f"raw:{RAW}" for row in rows)
    return [next(iter(row.errors)) for row in rows]


@pytest.mark.parametrize("order", ["producer first", "worker first"])
def test_the_go_producer_publishes_unchanged_in_both_start_orders(
    order, no_raw_queue, start_worker, settings, producer, database
):
    rng = random.Random(order)
    ledger = Ledger()
    first = go_pulses(ledger, 300, "early", rng)
    later = go_pulses(ledger, 300, "late", rng)
    too_fine = [go_pulse_body("early", "fine", "GB", t) for t in TOO_FINE]

    if order == "producer first":
        # The first version's deployment: its producer created the queue and filled it.
        assert publish_like_go(settings.broker_url, RAW, [*first, *too_fine]) == len(first) + len(too_fine)
        assert queue_counts(RAW) == (len(first) + len(too_fine), 0)
        worker = start_worker("first-version-a")
    else:
        worker = start_worker("first-version-b")
        publish_like_go(settings.broker_url, RAW, [*first, *too_fine])
    # And while the worker runs: its declaration and the producer's agree.
    publish_like_go(settings.broker_url, RAW, later)
    wait_until_settled(worker, RAW)
    persist_through_the_worker(producer, worker)

    assert persisted_sums_per_group(database) == ledger.per_group()
    assert rejected_amount_rows(database) == ["used_amount"] * len(TOO_FINE)
    assert dead_letter_messages(settings.broker_url) == []
    assert "PRECONDITION_FAILED" not in worker.log.read_text()


def list_queue_arguments(queue: str) -> str:
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    listing = subprocess.run(
        [ctl, "-q", "list_queues", "-p", RABBITMQ_VHOST, "--no-table-headers", "name", "arguments"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return next(line.split("\t", 1)[1] for line in listing.splitlines() if line.split("\t")[0] == queue)


def test_a_queue_declared_with_the_old_dead_letter_argument_is_still_consumed(
    no_raw_queue, start_worker, settings, producer, database
):
    ledger = Ledger()
    old_queue = Queue(
        RAW,
        Exchange(""),
        routing_key=RAW,
        durable=True,
        queue_arguments={"x-dead-letter-exchange": DEAD_LETTERS},
    )
    pulses = [
        {"id": f"old-{i}", "tenant": "old", "product_sku": "vm", "use_unity": "h", "used_amount": f"{i}.5"}
        for i in range(50)
    ]
    with Connection(settings.broker_url, transport_options={"confirm_publish": True}) as connection:
        publish = connection.Producer().publish
        for pulse in pulses:
            publish(
                body_of(pulse),
                exchange="",
                routing_key=RAW,
                content_type="application/json",
                declare=[old_queue],
            )
            ledger.add("old", "vm", "h", hour_ago(0), pulse["used_amount"])
    assert "x-dead-letter-exchange" in list_queue_arguments(RAW)

    worker = start_worker("old-queue")
    wait_until_settled(worker, RAW)
    persist_through_the_worker(producer, worker)
    assert persisted_sums_per_group(database) == ledger.per_group()
    log = worker.log.read_text()
    assert "WARNING" in log and "first-version producers" in log and "delete_queue" in log

    # What the warning says: such a queue refuses the first version's producers...
    with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="inequivalent arg"):
        publish_like_go(settings.broker_url, RAW, [go_pulse_body("go", "vm", "h", "1")])
    # ...and the migration it gives: delete it once empty; the worker re-declares it.
    with Connection(settings.broker_url) as connection:
        connection.default_channel.queue_delete(RAW, if_empty=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            arguments = list_queue_arguments(RAW)
            break
        except StopIteration:
            assert time.monotonic() < deadline, worker.tail()
            time.sleep(0.5)
    assert "x-dead-letter-exchange" not in arguments
    publish_like_go(settings.broker_url, RAW, [go_pulse_body("go", "vm", "h", "1")])
    wait_until_settled(worker, RAW)
    persist_through_the_worker(producer, worker)
    assert persisted_sums_per_group(database)[("go", "vm", "h")] == Decimal(1)


def test_undecodable_raw_bodies_are_published_to_pulses_dead_then_acked(
    no_raw_queue, start_worker, settings, database
):
    worker = start_worker("dead-letters")
    valid = go_pulse_body("dl", "vm", "h", "2.25")
    publish_like_go(settings.broker_url, RAW, [GARBAGE[0], valid, *GARBAGE[1:]])
    wait_until_settled(worker, RAW)

    held = dead_letter_messages(settings.broker_url)
    assert sorted(body for body, _, _ in held) == sorted(GARBAGE)
    for _body, headers, properties in held:
        assert headers[ORIGIN_QUEUE_HEADER] == RAW
        assert headers[REASON_HEADER]  # e.g. "not UTF-8 JSON: JSONDecodeError(...)"
        assert properties["content_type"] == "application/json"
        assert properties["delivery_mode"] == 2  # kept through a broker restart, unlike the original
    reasons = {body: headers[REASON_HEADER] for body, headers, _ in held}
    assert reasons[b'"a string"'].startswith("a JSON str")
    assert "not UTF-8 JSON" in reasons[GARBAGE[1]]
    assert queue_counts(DEAD_LETTERS) == (0, 0)


def test_replay_sends_raw_dead_letters_back_to_the_raw_queue(
    no_raw_queue, start_worker, settings, producer, database
):
    worker = start_worker("replay")
    # A valid body dead-lettered by a worker that could not take it then (say, a
    # smaller RAW_MAX_BODY_BYTES), and a garbage one, as the consumer publishes them.
    pulse = {
        "id": "replayed-1",
        "tenant": "rp",
        "product_sku": "vm",
        "use_unity": "h",
        "used_amount": "7.000001",
    }
    with Connection(settings.broker_url, transport_options={"confirm_publish": True}) as connection:
        publish = connection.Producer().publish
        for body in (body_of(pulse), GARBAGE[0]):
            publish(
                body,
                exchange=dead_letter_exchange,
                routing_key=DEAD_LETTERS,
                content_type="application/json",
                headers={ORIGIN_QUEUE_HEADER: RAW, REASON_HEADER: "body too large"},
                delivery_mode=2,
            )

    report = replay_dead_letters(settings.broker_url)
    assert dict(report.replayed) == {RAW: 2} and report.left == 0
    wait_until_settled(worker, RAW)
    persist_through_the_worker(producer, worker)
    assert persisted_sums_per_group(database) == {("rp", "vm", "h"): Decimal("7.000001")}
    # Garbage is still garbage: back in pulses.dead, once, with a fresh reason.
    ((body, headers, _),) = dead_letter_messages(settings.broker_url)
    assert body == GARBAGE[0] and headers[REASON_HEADER].startswith("not UTF-8 JSON")


def set_dead_letter_queue_full(full: bool) -> None:
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    if full:  # every publish to pulses.dead is nacked
        command = [
            ctl,
            "-q",
            "set_policy",
            "-p",
            RABBITMQ_VHOST,
            "--apply-to",
            "queues",
            "dead-full",
            "^pulses\\.dead$",
            '{"max-length": 0, "overflow": "reject-publish"}',
        ]
    else:
        command = [ctl, "-q", "clear_policy", "-p", RABBITMQ_VHOST, "dead-full"]
    subprocess.run(command, capture_output=True, check=True)


def test_a_dead_letter_not_confirmed_keeps_its_batch_unacked_until_it_is(
    no_raw_queue, start_worker, settings, producer, database
):
    worker = start_worker("dead-letters-nacked")
    set_dead_letter_queue_full(True)
    try:
        time.sleep(1)  # policies apply asynchronously
        publish_like_go(settings.broker_url, RAW, [GARBAGE[0], go_pulse_body("held", "vm", "h", "3")])
        time.sleep(3)
        assert queue_counts(RAW) == (0, 2)  # neither dropped nor acked: held by the worker
        assert "not done" in worker.log.read_text()
    finally:
        set_dead_letter_queue_full(False)
    wait_until_settled(worker, RAW, timeout=60)
    persist_through_the_worker(producer, worker)
    assert persisted_sums_per_group(database) == {("held", "vm", "h"): Decimal(3)}
    assert [body for body, _, _ in dead_letter_messages(settings.broker_url)] == [GARBAGE[0]]
