"""End to end: a producer with only Celery → RabbitMQ → a real worker → Redis → persist → PostgreSQL.

The sums in PostgreSQL must equal, to the micro-unit, a Decimal ledger the test keeps
itself, through duplicate ids, a message delivered twice, extreme amounts, two hours,
awkward tenants and a batch full of invalid pulses.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import text

from ingestor.pulses.task_names import INGEST_PULSE, INGEST_PULSES, PERSIST_PULSES
from tests.support.ledger import Ledger, persisted_sums
from tests.support.pulses import MISSING, pulse
from tests.support.worker import wait_until_idle

pytestmark = pytest.mark.usefixtures("clean_state")

QUEUES = ("pulses", "persist")


def send_batch(producer, pulses, task_id=None):
    """Publish exactly as the README tells another service to."""
    return producer.send_task(
        INGEST_PULSES, args=[pulses], exchange="pulses", routing_key="pulses", task_id=task_id
    ).id


def persist_through_worker(producer, worker):
    wait_until_idle(producer, worker, QUEUES)
    producer.send_task(PERSIST_PULSES, exchange="persist", routing_key="persist")
    wait_until_idle(producer, worker, QUEUES)


def test_sums_are_exact_through_duplicates_redeliveries_and_invalid_pulses(producer, worker, database):
    now = datetime.now(UTC)
    hour_a = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    hour_b = hour_a + timedelta(hours=1)
    colon_tenant, unicode_tenant = "acme:eu-west:1", "ação-租户-🚀"
    ledger = Ledger()

    # Every pulse here is of vm.small in vCPU-hour (the builder's defaults) unless it says otherwise.
    first = [
        pulse(id="p-1", tenant=colon_tenant, used_amount="0.000001", timestamp=hour_a + timedelta(minutes=5)),
        pulse(
            id="p-2",
            tenant=unicode_tenant,
            used_amount="12345678.123456",
            timestamp=hour_a + timedelta(minutes=6),
        ),
        # An offset other than UTC: 01:30+02:00 is 23:30Z of the previous day.
        pulse(
            tenant=colon_tenant,
            used_amount=2,
            timestamp=(hour_b + timedelta(minutes=30)).astimezone(timezone(timedelta(hours=2))),
        ),
        # A JSON number with a fraction: read as a decimal, never through a binary float.
        pulse(
            tenant=colon_tenant,
            used_amount=0.1,
            timestamp=hour_b + timedelta(minutes=31),
            unknown_field="ignored",
        ),
        # A tenant that would collide with another if fields were joined with ':'.
        pulse(
            tenant="acme",
            product_sku="eu-west:1:vm.small",
            used_amount="7",
            timestamp=hour_a + timedelta(minutes=7),
        ),
    ]
    ledger.add(colon_tenant, "vm.small", "vCPU-hour", hour_a, "0.000001")
    ledger.add(unicode_tenant, "vm.small", "vCPU-hour", hour_a, "12345678.123456")
    ledger.add(colon_tenant, "vm.small", "vCPU-hour", hour_b, "2")
    ledger.add(colon_tenant, "vm.small", "vCPU-hour", hour_b, "0.1")
    ledger.add("acme", "eu-west:1:vm.small", "vCPU-hour", hour_a, "7")

    # Each wrong in one field, the one its rejection must name.
    invalid = [
        (pulse(used_amount="-1"), "used_amount"),
        (pulse(used_amount="NaN"), "used_amount"),
        (pulse(used_amount=float("nan")), "used_amount"),
        (pulse(used_amount="1.0000001"), "used_amount"),
        (pulse(tenant=MISSING), "tenant"),
        (pulse(used_amount=MISSING), "used_amount"),
        (pulse(timestamp="yesterday"), "timestamp"),
        (pulse(timestamp="2026-01-01T10:00:00"), "timestamp"),  # no offset
        (pulse(timestamp=now - timedelta(days=40)), "timestamp"),  # too late
        (pulse(timestamp=now + timedelta(hours=1)), "timestamp"),  # future
        (pulse(tenant="bad\x00tenant"), "tenant"),
        ("not a pulse", "_schema"),
    ]
    mixed = [bad for bad, _ in invalid] + [
        pulse(
            id="p-3", tenant=unicode_tenant, used_amount="0.999999", timestamp=hour_a + timedelta(minutes=59)
        ),
    ]
    ledger.add(unicode_tenant, "vm.small", "vCPU-hour", hour_a, "0.999999")

    # A later batch repeats ids p-1 and p-2 (different amounts even): counted once.
    repeats = [{**first[0], "used_amount": "5"}, {**first[1]}]

    # The same message delivered twice (same task id, pulses without ids).
    storage = {"tenant": unicode_tenant, "product_sku": "storage", "use_unity": "GB", "used_amount": "1.5"}
    redelivered = [pulse(**storage, timestamp=hour_b + timedelta(minutes=minute)) for minute in (1, 2)]
    ledger.add(unicode_tenant, "storage", "GB", hour_b, "1.5")
    ledger.add(unicode_tenant, "storage", "GB", hour_b, "1.5")
    redelivered_id = str(uuid.uuid4())

    send_batch(producer, first)
    mixed_id = send_batch(producer, mixed)
    send_batch(producer, repeats)
    send_batch(producer, redelivered, task_id=redelivered_id)
    send_batch(producer, redelivered, task_id=redelivered_id)
    persist_through_worker(producer, worker)

    assert persisted_sums(database) == ledger.expected()

    with database.engine.connect() as connection:
        rejected = connection.execute(
            text("SELECT message_id, position, errors, payload FROM rejected_pulse ORDER BY position")
        ).all()
    assert [(r.message_id, r.position) for r in rejected] == [(mixed_id, i) for i in range(len(invalid))]
    for row, (_, field) in zip(rejected, invalid, strict=True):
        assert field in row.errors, (row.position, row.errors)
    assert "\\u0000" in rejected[10].payload  # the NUL byte is kept, escaped


def test_persist_adds_to_hours_already_persisted(producer, worker, database):
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
    late = {"tenant": "late", "product_sku": "db", "use_unity": "GB", "timestamp": hour}
    send_batch(producer, [pulse(**late, used_amount="1.25")])
    persist_through_worker(producer, worker)
    # A late pulse for an hour already persisted is added to its row, not lost.
    send_batch(producer, [pulse(**late, used_amount="0.75")])
    persist_through_worker(producer, worker)

    assert persisted_sums(database) == {("late", "db", "GB", hour): (Decimal("2"), 2)}


def test_single_pulse_task(producer, worker, database):
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    pulse = {
        "id": "one",
        "tenant": "solo",
        "product_sku": "fn",
        "use_unity": "call",
        "used_amount": "3",
        "timestamp": hour.isoformat(),
    }
    for _ in range(2):
        producer.send_task(INGEST_PULSE, args=[pulse], exchange="pulses", routing_key="pulses")
    persist_through_worker(producer, worker)

    assert persisted_sums(database) == {("solo", "fn", "call", hour): (Decimal("3"), 1)}
