"""`flask pulses replay-rejected`: quarantined pulses counted after all, each row at most once.

The rows are made by the raw path's own code (a Go producer's float-encoder bodies,
decoded and validated as the worker does), replayed through the CLI, flushed, and
the sums checked against a Decimal ledger.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

import pytest
from sqlalchemy import text

from ingestor.pulses.ingest import ingest_batch
from ingestor.pulses.raw_consumer import decode_body
from tests.support.go_producer import go_pulse_body
from tests.support.ledger import persisted_sums_per_group

pytestmark = pytest.mark.usefixtures("clean_state")

TOO_FINE = {"acme": ["0.30000000000000004", "5e-07", "1.5e-07", "2.0000025"], "zeta": ["0.1234565"]}


def reject_like_the_raw_consumer(app, tenant: str, amount_text: str, *, pulse_id: str | None = None) -> None:
    body = go_pulse_body(tenant, "vm", "h", amount_text)
    if pulse_id is not None:
        body = body[:-1] + b',"id":"%s"}' % pulse_id.encode()
    services = app.extensions["pulses"]
    ingest_batch(
        decode_body(body, 4096),
        message_id=f"raw:{uuid.uuid4().hex}",
        source="raw:pulses.raw",
        validator=services.validator,
        counter=services.counter,
        database=app.extensions["database"],
    )


def replay(app, *args: str) -> str:
    result = app.test_cli_runner().invoke(args=["pulses", "replay-rejected", *args])
    assert result.exit_code == 0, result.output
    return result.output


def rows(database) -> int:
    with database.engine.connect() as connection:
        return connection.execute(text("SELECT count(*) FROM rejected_pulse")).scalar_one()


def persist(app) -> None:
    app.extensions["pulses"].persister.persist_pending()


def rounded(amount_text: str) -> Decimal:
    return Decimal(amount_text).quantize(Decimal("0.000001"), rounding=ROUND_HALF_EVEN)


def test_too_precise_amounts_are_counted_only_when_asked_rounded_and_once(app, database):
    for tenant, amounts in TOO_FINE.items():
        for amount in amounts:
            reject_like_the_raw_consumer(app, tenant, amount)
    reject_like_the_raw_consumer(app, "acme", "-1")  # invalid for another reason
    assert rows(database) == 6

    # Without --round-half-even they stay rejected: nothing is invented.
    assert "counted 0 pulse(s)" in replay(app, "--reason", "fraction_digits")
    assert "would count 4 pulse(s) (4 rounded)" in replay(
        app, "--tenant", "acme", "--round-half-even", "--dry-run"
    )
    assert rows(database) == 6

    out = replay(app, "--reason", "used_amount", "--tenant", "acme", "--round-half-even")
    assert "counted 4 pulse(s) (4 rounded)" in out and "1 still invalid" in out
    assert rows(database) == 2  # zeta's, and the negative one
    assert "counted 0 pulse(s)" in replay(
        app, "--tenant", "acme", "--round-half-even"
    )  # replayed rows are gone
    persist(app)
    assert persisted_sums_per_group(database) == {("acme", "vm", "h"): sum(map(rounded, TOO_FINE["acme"]))}
    assert sum(map(rounded, TOO_FINE["acme"])) == Decimal("2.300002")  # 0.3 + 0 + 0 + 2.000002: half to even


def test_a_row_replayed_again_after_a_crash_counts_once(app, database):
    reject_like_the_raw_consumer(app, "acme", "0.0000015")
    with database.engine.connect() as connection:
        (row,) = connection.execute(text("SELECT * FROM rejected_pulse")).mappings().all()
    assert "counted 1 pulse(s)" in replay(app, "--round-half-even")
    # A replay that counted in Redis then died before its commit leaves the row: the
    # next replay of that row finds its dedupe key and only deletes it.
    with database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO rejected_pulse"
                " (received_at, source, message_id, position, tenant, payload, errors, reason_codes)"
                " VALUES (:received_at, :source, :message_id, :position, :tenant, :payload,"
                " CAST(:errors AS jsonb), :reason_codes)"
            ),
            {**row, "errors": '{"used_amount": ["Must have at most 6 fractional digits."]}'},
        )
    assert "counted 0 pulse(s) (1 rounded), 1 already counted" in replay(app, "--round-half-even")
    assert rows(database) == 0
    persist(app)
    assert persisted_sums_per_group(database) == {("acme", "vm", "h"): Decimal("0.000002")}


def test_filters_and_the_hour_a_pulse_without_timestamp_counts_in(app, database, redis_client):
    reject_like_the_raw_consumer(app, "acme", "0.1234565")  # no id, no timestamp
    reject_like_the_raw_consumer(app, "acme", "0.1234565", pulse_id="p-1")
    reject_like_the_raw_consumer(app, "acme", "0.1234565", pulse_id="p-1")  # the same pulse sent twice
    with database.engine.begin() as connection:  # the first one was rejected three hours ago
        connection.execute(
            text("UPDATE rejected_pulse SET received_at = now() - interval '3 hours' WHERE id = 1")
        )
    since = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    # The twin (same tenant and id) is the same usage: deduplicated, its row deleted.
    assert "counted 1 pulse(s) (2 rounded), 1 already counted" in replay(
        app, "--since", since, "--round-half-even"
    )
    assert rows(database) == 1
    assert "counted 1 pulse(s) (1 rounded)" in replay(app, "--tenant", "acme", "--round-half-even")
    assert rows(database) == 0
    persist(app)
    with database.engine.connect() as connection:
        windows = dict(connection.execute(text("SELECT window_start, used_amount FROM pulse_usage")).all())
    # Each counts in the hour it entered the system (its row's received_at), not now.
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    assert windows == {hour: Decimal("0.123456"), hour - timedelta(hours=3): Decimal("0.123456")}
