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

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from alembic import command
from sqlalchemy import Engine, create_engine, text

from ingestor.database import Database, alembic_config, upgrade_schema
from ingestor.pulses import keys
from ingestor.pulses.schema import to_micro_units
from ingestor.pulses.usage import UsageQuery, _filters, _rollup_statement
from ingestor.pulses.usage_sources import usage_sources
from ingestor.pulses.usage_windows import usage_windows
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


def populated_at(
    url: str, revision: str, start: str, tenants: int, steps: int, step_hours: int = 1
) -> Engine:
    """A new database at `revision`, its pulse_usage holding `tenants` x 4 SKUs of rows
    every `step_hours` from `start`, `steps` times, with exact amounts; its engine."""
    recreate_database(url)
    upgrade_schema(url, revision)
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO pulse_usage (tenant, product_sku, use_unity, window_start, used_amount, pulse_count)"
                " SELECT 'tenant-' || (g % :tenants), 'sku-' || (g / :tenants % 4), 'GB',"
                " CAST(:start AS timestamptz) + make_interval(hours => :step_hours * (g / (4 * :tenants))),"
                " g / 1000000.0, 1 + g % 3"
                " FROM generate_series(0, :steps * 4 * :tenants - 1) g"
            ),
            {"tenants": tenants, "start": start, "steps": steps, "step_hours": step_hours},
        )
    return engine


def test_revision_0006_backfills_a_populated_table_and_downgrades(fresh_database_url):
    url = fresh_database_url
    # 60 days of hours from mid-October: three UTC months, 20 groups.
    engine = populated_at(url, "0005", "2026-10-15 00:00+00", tenants=5, steps=60 * 24)
    try:
        with engine.begin() as connection:
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


def monthly_indexes(connection) -> dict[str, str]:
    return dict(
        connection.execute(
            text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'pulse_usage_monthly'")
        ).all()
    )


def rollup_scans(connection, **filters: tuple[str, ...]) -> list[tuple[str, str | None]]:
    """(node type, index name) of each scan of the rollup in the plan of the usage query
    for the UTC month of November (its one window holds the whole month: the rollup's rows)."""
    window_from = datetime(2026, 11, 1, tzinfo=UTC)
    query = UsageQuery(
        window_from, window_from.replace(month=12), "month", "UTC", include_pending=False, **filters
    )
    conditions, params = _filters(query)
    sources = usage_sources(
        usage_windows(query.window_from, query.window_to, query.window_size, query.time_zone)
    )
    assert sources is not None and not sources.hours, "the month alone, from the rollup"
    statement = _rollup_statement(sources, [], conditions, params)
    # Small tables: without this a sequential scan wins whatever the indexes are.
    connection.execute(text("SET enable_seqscan = off"))
    plan = connection.execute(text(f"EXPLAIN (FORMAT JSON) {statement.text}"), params).scalar_one()
    nodes, scans = [(json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]], []
    while nodes:
        node = nodes.pop()
        if (
            "Scan" in node["Node Type"]
            and node.get("Relation Name", "pulse_usage_monthly") == "pulse_usage_monthly"
        ):
            scans.append((node["Node Type"], node.get("Index Name")))
        nodes.extend(node.get("Plans", []))
    connection.execute(text("RESET enable_seqscan"))
    return scans


def indexes_read(scans: list[tuple[str, str | None]]) -> set[str | None]:
    """The indexes of the rollup's scans; None for a scan of the heap alone."""
    return {name for node, name in scans if node != "Bitmap Heap Scan"}


def updated_monthly_rows(connection) -> tuple[int, int]:
    """(rows updated, of which HOT) in pulse_usage_monthly by this transaction."""
    counts = connection.execute(
        text(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relname = 'pulse_usage_monthly'"
        )
    ).one()
    return counts[0], counts[1]


# One more pulse in every group of one hour of October: 200 monthly rows updated.
ADD_A_PULSE = text(
    "UPDATE pulse_usage SET pulse_count = pulse_count + 1 WHERE window_start = '2026-10-20 06:00+00'"
)


def test_revision_0007_keys_the_rollup_by_its_group_and_month_and_downgrades(fresh_database_url):
    url = fresh_database_url
    # 90 days from 1 October every 6 hours: three UTC months, 200 groups.
    engine = populated_at(url, "0006", "2026-10-01 00:00+00", tenants=50, steps=90 * 4, step_hours=6)
    try:
        with engine.begin() as connection:
            expected = hourly_sums_by_month(connection)
            assert len(expected) == 3 * 200 and monthly_rollup(connection) == expected

        upgrade_schema(url)

        with engine.begin() as connection:
            assert monthly_rollup(connection) == expected
            assert set(monthly_indexes(connection)) == {
                "pk_pulse_usage_monthly",
                "ix_pulse_usage_monthly_month_start_brin",
            }
            assert monthly_indexes(connection)["pk_pulse_usage_monthly"].endswith(
                "(tenant, product_sku, use_unity, month_start)"
            )
            assert connection.execute(
                text("SELECT reloptions FROM pg_class WHERE relname = 'pulse_usage_monthly'")
            ).scalar_one() == ["fillfactor=50"]
            # One tenant's month through the key, the platform's through the BRIN.
            assert indexes_read(rollup_scans(connection, tenant=("tenant-7",))) == {"pk_pulse_usage_monthly"}
            assert indexes_read(rollup_scans(connection)) == {"ix_pulse_usage_monthly_month_start_brin"}
            # The triggers write into the rebuilt table, and adding to its rows is HOT.
            connection.execute(ADD_A_PULSE)
            assert updated_monthly_rows(connection) == (200, 200)
            expected = hourly_sums_by_month(connection)
            assert monthly_rollup(connection) == expected

        command.downgrade(alembic_config(url), "0006")

        with engine.begin() as connection:
            assert monthly_rollup(connection) == expected
            assert set(monthly_indexes(connection)) == {
                "pk_pulse_usage_monthly",
                "uq_pulse_usage_monthly_tenant_product_sku_use_unity_month_start",
                "ix_pulse_usage_monthly_tenant_month_start",
                "ix_pulse_usage_monthly_month_start",
            }
            assert monthly_indexes(connection)["pk_pulse_usage_monthly"].endswith("(id)")
            connection.execute(ADD_A_PULSE)
            assert monthly_rollup(connection) == hourly_sums_by_month(connection)
            # Full pages: the updates cannot all stay on their rows' pages.
            updated, hot = updated_monthly_rows(connection)
            assert updated == 200 and hot < 200
        upgrade_schema(url)  # and up again
    finally:
        engine.dispose()
