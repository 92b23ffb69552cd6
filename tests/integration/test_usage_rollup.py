"""pulse_usage_monthly equals pulse_usage grouped by UTC month, after every kind of write.

The rollup is kept by triggers on pulse_usage (revision 0006) in the writer's
transaction: flushes of real batches (a first flush's COPY, a flush into a window
that has rows, a late pulse into an old hour of the previous month), a re-run of a
committed batch, a flush killed before and after its commit and its retry, and an
operator's UPDATE, DELETE and TRUNCATE. Each check compares the rollup with a GROUP
BY of the hourly rows and the totals with the test's own ledger. Revision 0006
backfills a table that already has rows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from ingestor.database import Database, alembic_config, upgrade_schema
from ingestor.pulses import keys
from ingestor.pulses.schema import to_micro_units
from tests.support.ledger import Ledger, hourly_sums_by_month, monthly_rollup, persisted_sums
from tests.support.services import recreate_database
from tests.support.windows import countable, flush_dying_at

pytestmark = pytest.mark.usefixtures("clean_state")

HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
# An hour of the previous UTC month, whatever today is.
LAST_MONTH = HOUR.replace(day=1, hour=5) - timedelta(days=3)


class Producer:
    """Counts pulses straight into Redis and writes them in the ledger."""

    def __init__(self, app, ledger: Ledger) -> None:
        self.counter = app.extensions["pulses"].counter
        self.ledger = ledger
        self.sequence = 0

    def count(self, n: int, tenant: str, amount: str, hour: datetime = HOUR, sku: str = "vm") -> None:
        pulses = []
        for _ in range(n):
            self.sequence += 1
            micro = to_micro_units(Decimal(amount))
            pulses.append(countable(tenant, f"pulse-{self.sequence}", hour, micro, sku=sku))
            self.ledger.add(tenant, sku, "hour", hour, amount)
        assert self.counter.count(pulses) == n


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


@pytest.fixture
def producer(app, ledger) -> Producer:
    return Producer(app, ledger)


@pytest.fixture
def persister(app):
    return app.extensions["pulses"].persister


def assert_rollup_matches(database: Database, ledger: Ledger | None = None) -> None:
    with database.engine.connect() as connection:
        rollup, expected = monthly_rollup(connection), hourly_sums_by_month(connection)
    assert rollup == expected
    if ledger is not None:
        assert persisted_sums(database) == ledger.expected()
        assert sum(count for _, count in rollup.values()) == sum(c for _, c in ledger.expected().values())


def test_flushes_late_pulses_reruns_and_killed_flushes_keep_the_rollup_equal_to_the_hours(
    persister, producer, ledger, database
):
    producer.count(30, "acme", "0.000123")
    producer.count(7, "globex", "12.5", sku="db")
    persister.persist_pending()  # the window's first flush: COPY
    assert_rollup_matches(database, ledger)
    with database.engine.connect() as connection:
        assert len(monthly_rollup(connection)) == 2

    producer.count(5, "acme", "1.000001")  # into a window that has rows: the upsert
    producer.count(3, "acme", "2.5", hour=LAST_MONTH)  # late, into last month's hour
    producer.count(2, "initech", "0.1", hour=LAST_MONTH + timedelta(hours=1))
    persister.persist_pending()
    assert_rollup_matches(database, ledger)

    producer.count(4, "acme", "0.333333")
    flush_dying_at(persister, "after_commit")  # committed, DONE not run
    producer.count(6, "globex", "0.5", sku="db")
    flush_dying_at(persister, "before_commit")  # nothing written
    report = persister.persist_pending()  # the retries
    assert report.already_persisted == 1
    assert_rollup_matches(database, ledger)

    with database.engine.connect() as connection:
        months = monthly_rollup(connection)
        committed_batch = connection.execute(text("SELECT id FROM flush_batch LIMIT 1")).scalar_one()
    # The same batch once more, as a second run that read it would: nothing added.
    persister.persist_batch(keys.SHARD_TAGS[0], keys.hour_of(HOUR), committed_batch)
    with database.engine.connect() as connection:
        assert monthly_rollup(connection) == months
    assert_rollup_matches(database, ledger)
    assert months[("acme", "vm", "hour", LAST_MONTH.replace(day=1, hour=0))] == (Decimal("7.500000"), 3)


def test_updates_deletes_and_truncate_of_hourly_rows_follow_into_the_rollup(persister, producer, database):
    producer.count(3, "acme", "1.5")
    producer.count(2, "acme", "0.25", hour=LAST_MONTH + timedelta(hours=2))
    producer.count(4, "globex", "2", hour=LAST_MONTH)
    persister.persist_pending()
    with database.engine.begin() as connection:
        connection.execute(
            text("UPDATE pulse_usage SET used_amount = used_amount + 0.000001, pulse_count = pulse_count + 1")
        )
        # A key that moves: out of one month into another.
        connection.execute(
            text("UPDATE pulse_usage SET window_start = :to WHERE tenant = 'globex'"), {"to": HOUR}
        )
    assert_rollup_matches(database)

    with database.engine.begin() as connection:
        connection.execute(text("DELETE FROM pulse_usage WHERE window_start = :hour"), {"hour": HOUR})
    assert_rollup_matches(database)
    with database.engine.connect() as connection:
        assert monthly_rollup(connection) == {
            ("acme", "vm", "hour", LAST_MONTH.replace(day=1, hour=0)): (Decimal("0.500001"), 3)
        }

    with database.engine.begin() as connection:
        connection.execute(text("TRUNCATE pulse_usage"))
    with database.engine.connect() as connection:
        assert monthly_rollup(connection) == {}


def test_revision_0006_backfills_a_populated_table_and_downgrades(fresh_database_url):
    url = fresh_database_url
    recreate_database(url)
    upgrade_schema(url, "0005")
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            # 60 days of hours from mid-October: three UTC months, 20 groups, exact amounts.
            connection.execute(
                text(
                    "INSERT INTO pulse_usage (tenant, product_sku, use_unity, window_start, used_amount, pulse_count)"
                    " SELECT 'tenant-' || (g % 5), 'sku-' || (g / 5 % 4), 'GB',"
                    " timestamptz '2026-10-15 00:00+00' + make_interval(hours => g / 20),"
                    " g / 1000000.0, 1 + g % 3"
                    " FROM generate_series(0, 60 * 24 * 20 - 1) g"
                )
            )
            expected = hourly_sums_by_month(connection)

        upgrade_schema(url)

        with engine.connect() as connection:
            assert monthly_rollup(connection) == expected
            assert len(expected) == 3 * 20
        command.downgrade(alembic_config(url), "0005")
        with engine.connect() as connection:
            assert connection.execute(text("SELECT to_regclass('pulse_usage_monthly')")).scalar() is None
            assert hourly_sums_by_month(connection) == expected
    finally:
        engine.dispose()
