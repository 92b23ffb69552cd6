"""query_usage answers from the monthly rollup plus or minus hourly edges exactly as
from the hourly rows alone.

Hourly rows over four UTC months (with the DST changes of Berlin, New York and
Auckland in them) are written into pulse_usage; the triggers keep the rollup. Each
answer, for many ranges, zones, window sizes, groupings and filters, is compared
with a Python sum of the hourly rows read back, put in the same windows.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import text

from ingestor.pulses.usage import UsageQuery, query_usage
from ingestor.pulses.usage_sources import usage_sources
from ingestor.pulses.usage_windows import usage_windows

pytestmark = pytest.mark.usefixtures("clean_state")

ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Pacific/Auckland", "Etc/GMT+12", "Etc/GMT-14")
RANGES = (
    # (from, to) as UTC hours: whole months, a month and a half, most of one month,
    # a range starting and ending inside months, one beyond the data.
    ("2026-08-01T00:00Z", "2026-12-01T00:00Z"),
    ("2026-09-01T00:00Z", "2026-10-17T00:00Z"),
    ("2026-10-03T05:00Z", "2026-10-30T19:00Z"),
    ("2026-08-20T13:00Z", "2026-11-11T02:00Z"),
    ("2026-07-15T00:00Z", "2026-12-20T00:00Z"),
    ("2026-10-31T23:00Z", "2026-11-30T23:00Z"),  # Berlin's November
)
WINDOW_SIZES = (None, "month", "day")
GROUPINGS = ((), ("tenant",), ("tenant", "product_sku", "use_unity"))


@pytest.fixture
def hourly_rows(database) -> list[tuple]:
    """About 6,000 hourly rows from 1 August to 1 December, sparse and uneven, exact amounts."""
    with database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO pulse_usage (tenant, product_sku, use_unity, window_start, used_amount, pulse_count)"
                " SELECT 'tenant-' || (g % 3), 'sku-' || (g / 3 % 2), CASE WHEN g % 5 = 0 THEN 'GB' ELSE 'h' END,"
                " timestamptz '2026-08-01 00:00+00' + make_interval(hours => g / 3),"
                " (g * 7919 % 1000003) / 1000000.0, 1 + g % 4"
                " FROM generate_series(0, 122 * 24 * 3 - 1) g WHERE (g * 31 + g / 3) % 3 <> 0"
            )
        )
        # A group whose only row is in UTC November's last hour, outside Berlin's
        # November: that window's monthly row minus its edge leaves a count of 0.
        connection.execute(
            text(
                "INSERT INTO pulse_usage (tenant, product_sku, use_unity, window_start, used_amount, pulse_count)"
                " VALUES ('tenant-edge', 'sku-0', 'h', '2026-11-30T23:00Z', 1.5, 2)"
            )
        )
        return connection.execute(
            text(
                "SELECT tenant, product_sku, use_unity, window_start, used_amount, pulse_count FROM pulse_usage"
            )
        ).all()


def expected_rows(rows: list[tuple], query: UsageQuery) -> list[tuple]:
    """The answer computed in Python from the hourly rows: (start, end, group..., amount, count)."""
    windows = usage_windows(query.window_from, query.window_to, query.window_size, query.time_zone)
    starts = [window.start for window in windows]
    filters = (query.tenant, query.product_sku, query.use_unity)
    sums: dict[tuple, list] = defaultdict(lambda: [Decimal(0), 0])
    for tenant, sku, unit, hour, amount, count in rows:
        hour = hour.astimezone(UTC)
        values = (tenant, sku, unit)
        if not windows[0].start <= hour < windows[-1].end:
            continue
        if any(wanted and value not in wanted for value, wanted in zip(values, filters, strict=True)):
            continue
        index = bisect.bisect_right(starts, hour) - 1
        group = tuple(
            value if name in query.group_by else None
            for name, value in zip(("tenant", "product_sku", "use_unity"), values, strict=True)
        )
        total = sums[(index, group)]
        total[0] += amount
        total[1] += count
    return [
        (windows[index].start, windows[index].end, *group, amount, count)
        for (index, group), (amount, count) in sorted(sums.items())
    ]


def answered_rows(database, redis_client, query: UsageQuery) -> list[tuple]:
    with database.session() as session:
        return [
            (
                row.window_start,
                row.window_end,
                row.tenant,
                row.product_sku,
                row.use_unity,
                row.used_amount,
                row.pulse_count,
            )
            for row in query_usage(session, redis_client, query)
        ]


def test_answers_with_the_rollup_equal_the_hourly_sums_for_many_ranges_zones_sizes_and_groups(
    database, redis_client, hourly_rows
):
    used_rollup = 0
    for time_zone in ZONES:
        for window_from, window_to in RANGES:
            for window_size in WINDOW_SIZES:
                for group_by in GROUPINGS:
                    query = UsageQuery(
                        datetime.fromisoformat(window_from),
                        datetime.fromisoformat(window_to),
                        window_size,
                        time_zone,
                        group_by,
                        include_pending=False,
                    )
                    windows = usage_windows(query.window_from, query.window_to, window_size, time_zone)
                    used_rollup += usage_sources(windows) is not None
                    expected = expected_rows(hourly_rows, query)
                    assert answered_rows(database, redis_client, query) == expected, query
    # Most of these answers read monthly rows (day windows never do).
    assert used_rollup >= len(ZONES) * len(GROUPINGS) * 7


@pytest.mark.parametrize(
    "filters",
    [
        {"tenant": ("tenant-1",)},
        {"tenant": ("tenant-0", "tenant-2"), "use_unity": ("GB",)},
        {"product_sku": ("sku-1",), "use_unity": ("h", "none")},
        {"tenant": ("nobody",)},
    ],
)
def test_filtered_answers_with_the_rollup_equal_the_hourly_sums(database, redis_client, hourly_rows, filters):
    for time_zone in ("Europe/Berlin", "Pacific/Auckland"):
        for window_size in (None, "month"):
            query = UsageQuery(
                datetime.fromisoformat("2026-08-20T13:00Z"),
                datetime.fromisoformat("2026-12-01T00:00Z"),
                window_size,
                time_zone,
                ("product_sku",),
                **filters,
                include_pending=False,
            )
            assert answered_rows(database, redis_client, query) == expected_rows(hourly_rows, query), query
