"""Usage rows from pending cells: exact amounts, filters, windows, and the merge order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from ingestor.pulses import keys
from ingestor.pulses.pending import PendingCell
from ingestor.pulses.usage import UsageQuery, _aggregate, amount_of
from ingestor.pulses.usage_windows import usage_windows

START = datetime(2026, 11, 1, tzinfo=UTC)


def cell(
    hours: int, tenant: str, sku: str = "vm", unit: str = "h", micro: int = 1, count: int = 1
) -> PendingCell:
    return PendingCell(keys.hour_of(START + timedelta(hours=hours)), tenant, sku, unit, micro, count)


def test_amounts_are_exact_past_two_to_the_63_micro_units() -> None:
    assert amount_of(0) == Decimal("0.000000") and str(amount_of(0)) == "0.000000"
    assert str(amount_of(1)) == "0.000001"
    assert str(amount_of(3 * (2**63 - 1))) == "27670116110564.327421"
    assert (
        str(amount_of(10**40 + 7)) == "10000000000000000000000000000000000.000007"
    )  # past Decimal's 28 digits


def test_pending_cells_are_filtered_summed_per_window_and_group_in_byte_order() -> None:
    query = UsageQuery(START, START + timedelta(days=2), "day", group_by=("tenant",), use_unity=("h",))
    windows = usage_windows(query.window_from, query.window_to, query.window_size, query.time_zone)
    cells = [
        cell(30, "☕"),
        cell(1, "é", micro=5),
        cell(2, "é", sku="disk", micro=7, count=2),  # another sku: summed into the tenant's row
        cell(3, "Z"),
        cell(4, "a", unit="GB"),  # filtered out by use_unity
        cell(23, "a", micro=2**63),
    ]
    assert _aggregate(cells, windows, query) == [
        ((0, ("Z", None, None)), 1, 1),
        ((0, ("a", None, None)), 2**63, 1),
        ((0, ("é", None, None)), 12, 3),
        ((1, ("☕", None, None)), 1, 1),
    ]
    # Python's str order is UTF-8 byte order (what COLLATE "C" sorts by).
    names = ["Z", "a", "é", "☕"]
    assert sorted(names) == sorted(names, key=lambda name: name.encode())
