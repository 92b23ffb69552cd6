"""Revision 0005: one tenant's usage sums are read from the index alone.

Built on a table that already holds rows (as in production), then read by the
query GET /api/v1/usage runs for one tenant; the downgrade gives back revision
0004's index and keeps the rows.
"""

from __future__ import annotations

import json

from alembic import command
from sqlalchemy import create_engine, text

from ingestor.database import alembic_config, upgrade_schema
from tests.support.services import recreate_database

COVERING = "ix_pulse_usage_tenant_window_start_id_covering"
PREVIOUS = "ix_pulse_usage_tenant_window_start_id"
# The shape of usage.py's persisted sum for one tenant, by day.
ONE_TENANT_BY_DAY = (
    "SELECT width_bucket(window_start, CAST(:bounds AS timestamptz[])) - 1 AS window_index,"
    " sum(used_amount), sum(pulse_count) FROM pulse_usage"
    " WHERE window_start >= :start AND window_start < :end AND tenant = ANY(CAST(:tenants AS text[]))"
    " GROUP BY window_index ORDER BY window_index"
)


def pulse_usage_indexes(connection) -> dict[str, str]:
    return dict(
        connection.execute(
            text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'pulse_usage'")
        ).all()
    )


def scans_of(connection) -> list[tuple[str, str | None]]:
    """(node type, index name) of each scan in the plan of ONE_TENANT_BY_DAY."""
    # Small tables: without this a sequential scan wins whatever the indexes are.
    connection.execute(text("SET enable_seqscan = off"))
    plan = connection.execute(
        text(f"EXPLAIN (FORMAT JSON) {ONE_TENANT_BY_DAY}"),
        {
            "bounds": ["2026-11-01T00:00Z", "2026-11-02T00:00Z", "2026-11-03T00:00Z"],
            "start": "2026-11-01T00:00Z",
            "end": "2026-11-03T00:00Z",
            "tenants": ["tenant-7"],
        },
    ).scalar_one()
    # psycopg2 parses the json column; a str would be the plan's text.
    nodes, scans = [(json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]], []
    while nodes:
        node = nodes.pop()
        if "Scan" in node["Node Type"]:
            scans.append((node["Node Type"], node.get("Index Name")))
        nodes.extend(node.get("Plans", []))
    return scans


def test_revision_0005_covers_one_tenants_sums_on_a_populated_table_and_downgrades(fresh_database_url):
    url = fresh_database_url
    recreate_database(url)
    upgrade_schema(url, "0004")
    engine = create_engine(url)
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO pulse_usage (tenant, product_sku, use_unity, window_start, used_amount, pulse_count)"
                    " SELECT 'tenant-' || (g % 50), 'sku-' || (g / 50 % 4), 'GB',"
                    " timestamptz '2026-11-01 00:00+00' + make_interval(hours => g / 200), g / 1000.0, 1"
                    " FROM generate_series(0, 47 * 200 - 1) g"
                )
            )

        upgrade_schema(url)

        with autocommit.connect() as connection:
            # The visibility map an index-only scan needs (autovacuum sets it in production).
            connection.execute(text("VACUUM ANALYZE pulse_usage"))
            indexes = pulse_usage_indexes(connection)
            assert PREVIOUS not in indexes
            assert indexes[COVERING].endswith(
                "(tenant, window_start, id) INCLUDE (product_sku, use_unity, used_amount, pulse_count)"
            )
            assert connection.execute(
                text("SELECT indisvalid FROM pg_index WHERE indexrelid = CAST(:name AS regclass)"),
                {"name": COVERING},
            ).scalar_one()
            assert scans_of(connection) == [("Index Only Scan", COVERING)]

        command.downgrade(alembic_config(url), "0004")

        with autocommit.connect() as connection:
            indexes = pulse_usage_indexes(connection)
            assert COVERING not in indexes
            assert indexes[PREVIOUS].endswith("(tenant, window_start, id)")
            assert connection.execute(text("SELECT count(*) FROM pulse_usage")).scalar_one() == 47 * 200
            # The heap is read again: no index holds the amounts.
            assert "Index Only Scan" not in {node for node, _ in scans_of(connection)}
    finally:
        engine.dispose()
