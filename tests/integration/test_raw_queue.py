"""The raw pulse queue end to end: plain kombu → `pulses.raw` → the worker's consumer
step → Redis → persist → PostgreSQL, exact against a Decimal ledger the test keeps.

Through duplicate ids, a message published twice with the same AMQP message_id,
arrays, JSON numbers with fractions, invalid pulses (→ rejected_pulse) and garbage
bodies (→ `pulses.dead`, counting nothing).
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text

from tests.support.ledger import Ledger, persisted_sums, persisted_sums_per_group
from tests.support.raw import body_of, dead_letters, publish_raw
from tests.support.readme import readme_snippet, run_snippet
from tests.support.worker import wait_until_settled

pytestmark = pytest.mark.usefixtures("clean_state")

RAW = "pulses.raw"


def persist(app) -> None:
    app.extensions["pulses"].persister.persist_pending()


def test_raw_pulses_sum_exactly_and_garbage_is_dead_lettered(worker, settings, app, database, redis_client):
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    stamp = (hour + timedelta(minutes=10)).isoformat()
    ledger = Ledger()
    bodies: list[bytes | str | tuple[bytes | str, str | None]] = []

    # One pulse per message, the first version's shape (no id, no timestamp field in
    # theirs; here with a timestamp so the hour is known).
    for i in range(200):
        amount = f"{i}.{i:06d}"
        bodies.append(
            body_of(
                {
                    "tenant": "legacy",
                    "product_sku": "vm",
                    "use_unity": "hour",
                    "used_amount": amount,
                    "timestamp": stamp,
                }
            )
        )
        ledger.add("legacy", "vm", "hour", hour, amount)
    # Duplicates by id, even with another amount: counted once.
    with_id = {
        "id": "p-1",
        "tenant": "ids",
        "product_sku": "db",
        "use_unity": "GB",
        "used_amount": "0.000001",
        "timestamp": stamp,
    }
    bodies += [body_of(with_id), body_of({**with_id, "used_amount": "5"}), body_of([with_id, with_id])]
    ledger.add("ids", "db", "GB", hour, "0.000001")
    # JSON numbers with fractions, written by hand: read as decimals, never floats.
    bodies.append(
        b'[{"tenant": "num", "product_sku": "s3", "use_unity": "GB", "used_amount": 0.1, "timestamp": "%s"},'
        b' {"tenant": "num", "product_sku": "s3", "use_unity": "GB", "used_amount": 12345678.123456,'
        b' "timestamp": "%s"}]' % (stamp.encode(), stamp.encode())
    )
    ledger.add("num", "s3", "GB", hour, "0.1")
    ledger.add("num", "s3", "GB", hour, "12345678.123456")
    # Pulses without id in a message with an AMQP message_id, published twice (a
    # producer's retry): the second copy counts nothing.
    no_ids = [
        {"tenant": "mid", "product_sku": "fn", "use_unity": "call", "used_amount": "2.5", "timestamp": stamp}
    ] * 3
    message_id = str(uuid.uuid4())
    bodies += [(body_of(no_ids), message_id), (body_of(no_ids), message_id)]
    for _ in no_ids:
        ledger.add("mid", "fn", "call", hour, "2.5")
    # Without id nor message_id, the same body twice: two messages, counted twice.
    anonymous = {
        "tenant": "anon",
        "product_sku": "fn",
        "use_unity": "call",
        "used_amount": "1",
        "timestamp": stamp,
    }
    bodies += [body_of(anonymous), body_of(anonymous)]
    ledger.add("anon", "fn", "call", hour, "1")
    ledger.add("anon", "fn", "call", hour, "1")
    # A str body (sent utf-8: the consumer gets a str) with a tenant beyond ASCII.
    bodies.append(
        body_of(
            {
                "tenant": "ação-租户",
                "product_sku": "vm",
                "use_unity": "hour",
                "used_amount": "3",
                "timestamp": stamp,
            }
        ).decode()
    )
    ledger.add("ação-租户", "vm", "hour", hour, "3")
    # Invalid pulses inside valid bodies: rejected one by one, the rest counted.
    mixed = [
        {"tenant": "bad", "product_sku": "vm", "use_unity": "hour", "used_amount": "-1"},
        {"tenant": "ok", "product_sku": "vm", "use_unity": "hour", "used_amount": "4", "timestamp": stamp},
        "not a pulse",
        {"tenant": "bad\x00nul", "product_sku": "vm", "use_unity": "hour", "used_amount": "1"},
    ]
    mixed_id = "mixed-" + str(uuid.uuid4())
    bodies.append((body_of(mixed), mixed_id))
    bodies.append(body_of({"product_sku": "no tenant", "use_unity": "x", "used_amount": "1"}))
    ledger.add("ok", "vm", "hour", hour, "4")

    garbage = [
        b'{"tenant": "broken json',
        b"\xff\xfe not utf-8",
        b"42",
        b'"a string"',
        b"null",
        b"[" * 100_000 + b"]" * 100_000,
        b"[" + b" " * settings.raw_max_body_bytes + b"]",  # valid JSON, but too large
        b"",
    ]
    # Garbage interleaved with valid messages, in the same batches.
    published = publish_raw(settings.broker_url, [*bodies[:100], *garbage, *bodies[100:]])

    wait_until_settled(worker, RAW)
    persist(app)

    assert persisted_sums(database) == ledger.expected()
    assert sorted(dead_letters(settings.broker_url)) == sorted(garbage)
    assert published == len(bodies) + len(garbage)

    with database.engine.connect() as connection:
        rejected = connection.execute(
            text("SELECT source, message_id, position, tenant, errors, payload FROM rejected_pulse")
        ).all()
    by_message = defaultdict(list)
    for row in rejected:
        assert row.source == "raw:pulses.raw"
        by_message[row.message_id].append(row)
    assert len(by_message) == 2
    (mixed_rows,) = [rows for mid, rows in by_message.items() if mid.endswith(f":{mixed_id}")]
    assert sorted((r.position, next(iter(r.errors))) for r in mixed_rows) == [
        (0, "used_amount"),
        (2, "_schema"),
        (3, "tenant"),
    ]
    assert "\\u0000" in next(r.payload for r in mixed_rows if r.position == 3)
    (other,) = [rows for mid, rows in by_message.items() if not mid.endswith(f":{mixed_id}")]
    assert [(r.position, next(iter(r.errors))) for r in other] == [(0, "tenant")]


def test_rejections_of_a_message_delivered_twice_are_kept_once(worker, settings, database):
    body = body_of([{"tenant": "t", "product_sku": "s", "use_unity": "u", "used_amount": "x"}])
    # The same message twice (same body and message_id), and the same body with
    # another message_id: two messages, each with its own rejection row.
    publish_raw(settings.broker_url, [(body, "m-1"), (body, "m-1"), (body, "m-2")])
    wait_until_settled(worker, RAW)

    with database.engine.connect() as connection:
        rows = connection.execute(text("SELECT message_id, position FROM rejected_pulse")).all()
    assert Counter(row.position for row in rows) == {0: 2}
    assert sorted(row.message_id.rsplit(":", 1)[1] for row in rows) == ["m-1", "m-2"]


def test_the_readme_raw_producer_snippet_reaches_the_sums(worker, settings, app, database):
    # Run as a first-version producer would: a fresh interpreter with kombu only.
    snippet = readme_snippet("raw-producer-snippet")
    for _ in range(2):  # the producer's retry: same id and message_id, counted once
        run_snippet(snippet, settings.broker_url, absent=("ingestor", "celery"))
    wait_until_settled(worker, RAW)
    persist(app)

    assert persisted_sums_per_group(database) == {
        ("acme", "vm.small", "vCPU-hour"): Decimal("2.5"),
        ("acme", "object-storage", "GB"): Decimal("0.000001"),
    }
