"""Usage over a range: persisted sums plus what Redis still holds, each pulse once.

One query reads under one PostgreSQL snapshot (pending.py explains why the order is
what makes it exact): `begin_usage_snapshot`, then the pending cells from Redis, then
the SQL sum of `pulse_usage` in the same REPEATABLE READ transaction, which sees that
snapshot however late it runs. The SQL rows are streamed (a server-side cursor) in
(window, group) order and merged with the pending cells, aggregated the same way in
Python (they are bounded by what Redis holds). Amounts are integer micro-units until
the row is built: a sum past 2^63 micro-units stays exact.

The windows come from `usage_windows` (the zone arithmetic in Python only). When a
window holds most of a UTC month, `usage_sources` answers it from the monthly rollup
(pulse_usage_monthly, in the same snapshot as the hourly rows) plus or minus hourly
rows at its edges, all under one GROUP BY; otherwise SQL gets the window bounds as an
array and puts each hourly row in its window with `width_bucket`.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from itertools import groupby
from typing import Literal

from redis import Redis
from sqlalchemy import TextClause, text
from sqlalchemy.orm import Session

from ingestor.pulses import keys
from ingestor.pulses.pending import PendingCell, begin_usage_snapshot, read_pending_usage
from ingestor.pulses.usage_sources import UsageSources, usage_sources
from ingestor.pulses.usage_windows import Window, usage_windows

GROUP_FIELDS = ("tenant", "product_sku", "use_unity")
MICRO_UNITS = 10**6
# Rows fetched per round trip from the server-side cursor.
STREAM_BATCH = 2000

WindowSize = Literal["hour", "day", "month"]
# (window index, group values in GROUP_FIELDS order, None where not grouped)
_Key = tuple[int, tuple[str | None, ...]]


@dataclass(frozen=True)
class UsageQuery:
    """What GET /api/v1/usage asks: a range, its windows, groups and filters.

    Filters (tenant, product_sku, use_unity) each match any of their values; empty:
    no filter. `group_by` names fields of GROUP_FIELDS; the others are summed over.
    """

    window_from: datetime
    window_to: datetime
    window_size: WindowSize | None = None
    time_zone: str = "UTC"
    group_by: tuple[str, ...] = ()
    tenant: tuple[str, ...] = ()
    product_sku: tuple[str, ...] = ()
    use_unity: tuple[str, ...] = ()
    include_pending: bool = True


@dataclass(frozen=True)
class UsageRow:
    """Usage of one window and group; the fields not grouped by are None."""

    window_start: datetime
    window_end: datetime
    tenant: str | None
    product_sku: str | None
    use_unity: str | None
    used_amount: Decimal
    pulse_count: int


def query_usage(
    session: Session, redis: Redis, query: UsageQuery, *, stored_rows_limit: int | None = None
) -> Iterator[UsageRow]:
    """The rows of `query`, ordered by window_start then the group fields in byte order.

    The stored rows stream from a server-side cursor; with `stored_rows_limit`, for an
    answer built whole, at most that many are read, in one round trip (a cursor costs
    three more). Past the limit the rows are incomplete: a caller asking for n + 1
    refuses an answer of more than n rows, since each stored row is a row of the answer.
    Raises `usage_windows.WindowsRefused` (before anything is read) for a range or zone
    that cannot be answered exactly, and `pending.PendingUnavailable` when Redis cannot
    be read exactly right now. `session` must be fresh (no transaction begun): the rows
    are read in its transaction, which must stay open until the iterator is exhausted.
    """
    windows = usage_windows(query.window_from, query.window_to, query.window_size, query.time_zone)
    unknown = set(query.group_by) - set(GROUP_FIELDS)
    if unknown:
        raise ValueError(f"not group fields: {sorted(unknown)}")
    begin_usage_snapshot(session)
    pending: list[tuple[_Key, int, int]] = []
    if query.include_pending:
        cells = read_pending_usage(
            session,
            redis,
            list(query.tenant) or None,
            keys.hour_of(windows[0].start),
            keys.hour_of(windows[-1].end),
        )
        pending = _aggregate(cells, windows, query)
    return _rows(windows, heapq.merge(_persisted(session, windows, query, stored_rows_limit), pending))


def _aggregate(
    cells: Iterable[PendingCell], windows: list[Window], query: UsageQuery
) -> list[tuple[_Key, int, int]]:
    """Pending cells that pass the filters, summed per (window, group), sorted."""
    starts = [window.start for window in windows]
    filters = [set(values) for values in (query.tenant, query.product_sku, query.use_unity)]
    sums: dict[_Key, list[int]] = {}
    for cell in cells:
        values = (cell.tenant, cell.product_sku, cell.use_unity)
        if any(wanted and value not in wanted for value, wanted in zip(values, filters, strict=True)):
            continue
        index = bisect.bisect_right(starts, keys.hour_start(cell.hour)) - 1
        key = (index, _group(values, query.group_by))
        total = sums.setdefault(key, [0, 0])
        total[0] += cell.micro_units
        total[1] += cell.pulse_count
    return [(key, micro, count) for key, (micro, count) in sorted(sums.items())]


def _group(values: tuple[str, ...], group_by: tuple[str, ...]) -> tuple[str | None, ...]:
    return tuple(
        value if name in group_by else None for name, value in zip(GROUP_FIELDS, values, strict=True)
    )


def _persisted(
    session: Session, windows: list[Window], query: UsageQuery, limit: int | None
) -> Iterator[tuple[_Key, int, int]]:
    """The sums of the stored rows per (window, group), in the same order as `_aggregate`'s:
    the hourly rows alone, or the monthly rollup's rows plus or minus hourly edges;
    streamed, or at most `limit` of them read at once."""
    grouped = [name for name in GROUP_FIELDS if name in query.group_by]
    filters, params = _filters(query)
    sources = usage_sources(windows)
    if sources is None:
        statement = _hourly_statement(windows, grouped, filters, params)
    else:
        statement = _rollup_statement(sources, grouped, filters, params)
    if limit is None:
        statement = statement.execution_options(yield_per=STREAM_BATCH)
    else:
        statement = text(f"{statement.text} LIMIT :stored_rows_limit")
        params["stored_rows_limit"] = limit
    for row in session.execute(statement, params):
        mapping = row._mapping
        group = tuple(mapping[name] if name in grouped else None for name in GROUP_FIELDS)
        yield (int(mapping["window_index"]), group), int(mapping["micro_units"]), int(mapping["pulse_count"])


def _filters(query: UsageQuery) -> tuple[list[str], dict[str, object]]:
    """The filter conditions (columns both tables have) and their parameters."""
    conditions: list[str] = []
    params: dict[str, object] = {}
    for name in GROUP_FIELDS:
        values = getattr(query, name)
        if values:
            conditions.append(f"{name} = ANY(CAST(:{name} AS text[]))")
            params[name] = list(values)
    return conditions, params


def _summed(grouped: list[str], source: str) -> TextClause:
    """The sums by window and group of `source` (rows of window_index, groups, amount, count)."""
    # COLLATE "C": byte order, which for UTF-8 is Python's str order (the merge needs one order).
    columns = "".join(f', {name} COLLATE "C" AS {name}' for name in grouped)
    order = "".join(f", {name}" for name in grouped)
    return text(
        f"SELECT window_index{columns},"
        " CAST(sum(used_amount) * 1000000 AS numeric(60, 0)) AS micro_units, sum(pulse_count) AS pulse_count"
        f" FROM {source} GROUP BY window_index{order}"
        # Hourly rows all count pulses: a group whose signed counts cancel had no usage
        # in the window (a month's row minus all its hours outside the window).
        " HAVING sum(pulse_count) <> 0"
        f" ORDER BY window_index{order}"
    )


def _hourly_statement(
    windows: list[Window], grouped: list[str], filters: list[str], params: dict[str, object]
) -> TextClause:
    """pulse_usage's rows of the range, each put in its window by `width_bucket`."""
    params["window_from"], params["window_to"] = windows[0].start, windows[-1].end
    # width_bucket's thresholds: the window starts and the end of the last; a row in
    # [starts[i], starts[i+1]) is in bucket i + 1.
    params["bounds"] = [window.start for window in windows] + [windows[-1].end]
    conditions = ["window_start >= :window_from", "window_start < :window_to", *filters]
    return _summed(
        grouped,
        "(SELECT width_bucket(window_start, CAST(:bounds AS timestamptz[])) - 1 AS window_index, *"
        f" FROM pulse_usage WHERE {' AND '.join(conditions)}) AS hourly",
    )


def _rollup_statement(
    sources: UsageSources, grouped: list[str], filters: list[str], params: dict[str, object]
) -> TextClause:
    """The monthly parts' rows and the signed hourly spans' rows, under one GROUP BY."""
    where = "".join(f" AND {condition}" for condition in filters)
    fields = "tenant, product_sku, use_unity"
    # One scan per month and per span, its bounds as parameters: joined with an array
    # of them instead, the planner cannot use the month_start and window_start indexes
    # and reads the whole tables (6 s instead of 0.2 s for Berlin's month, 10 million rows).
    monthly = []
    for n, part in enumerate(sources.months):
        params[f"month_window_{n}"], params[f"month_start_{n}"] = part.window_index, part.month_start
        monthly.append(
            f"SELECT CAST(:month_window_{n} AS int), {fields}, used_amount, pulse_count"
            f" FROM pulse_usage_monthly WHERE month_start = :month_start_{n}{where}"
        )
    # An hour can be in two spans (after one window's month, before the next's): its
    # rows are read by each.
    hourly = []
    for n, span in enumerate(sources.hours):
        params[f"span_window_{n}"], params[f"span_sign_{n}"] = span.window_index, span.sign
        params[f"span_start_{n}"], params[f"span_end_{n}"] = span.start, span.end
        sign = f"CAST(:span_sign_{n} AS int)"
        hourly.append(
            f"SELECT CAST(:span_window_{n} AS int), {fields}, {sign} * used_amount, {sign} * pulse_count"
            f" FROM pulse_usage WHERE window_start >= :span_start_{n} AND window_start < :span_end_{n}{where}"
        )
    parts = " UNION ALL ".join([*monthly, *hourly])
    return _summed(
        grouped,
        f"({parts}) AS parts(window_index, {fields}, used_amount, pulse_count)",
    )


def _rows(windows: list[Window], merged: Iterable[tuple[_Key, int, int]]) -> Iterator[UsageRow]:
    """One row per (window, group) of the merged stream, persisted and pending summed."""
    for (index, group), parts in groupby(merged, key=lambda part: part[0]):
        micro = count = 0
        for _, part_micro, part_count in parts:
            micro += part_micro
            count += part_count
        window = windows[index]
        tenant, product_sku, use_unity = group
        yield UsageRow(window.start, window.end, tenant, product_sku, use_unity, amount_of(micro), count)


def amount_of(micro_units: int) -> Decimal:
    """Micro-units as the exact Decimal amount with 6 fractional digits (no context rounding)."""
    whole, fraction = divmod(micro_units, MICRO_UNITS)
    return Decimal(f"{whole}.{fraction:06d}")
