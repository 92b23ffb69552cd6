"""Which stored rows answer each usage window: monthly rollup rows plus or minus hourly edges.

`pulse_usage_monthly` holds each UTC month's sums. A window that holds most of a UTC
month reads that month's rows instead of its hourly ones, then corrects at the edges
with hourly rows: plus the hours of the window outside its chosen months, minus the
hours of the chosen months outside the window. Berlin's November, [31 Oct 23:00Z,
30 Nov 23:00Z), is UTC November's monthly rows, minus 30 Nov 23:00-24:00Z, plus
31 Oct 23:00-24:00Z. Windows are whole UTC hours (usage_windows), so every edge is
whole hourly rows and the sums stay exact.

A month is chosen when more than half of it lies in the window: the hourly rows read
at its edges are then fewer than its own, and no month is chosen by two windows
(they do not overlap). Pure: the SQL that reads the sources is usage.py's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from ingestor.pulses.usage_windows import Window


@dataclass(frozen=True, slots=True)
class HourlySpan:
    """The hourly rows in [start, end), added (sign 1) to or subtracted (-1) from a window."""

    window_index: int
    start: datetime
    end: datetime
    sign: int


@dataclass(frozen=True, slots=True)
class MonthlyPart:
    """The monthly rows of the UTC month starting at `month_start`, added to a window."""

    window_index: int
    month_start: datetime


@dataclass
class UsageSources:
    """What answers a list of windows: monthly parts and hourly spans, in window order."""

    months: list[MonthlyPart] = field(default_factory=list)
    hours: list[HourlySpan] = field(default_factory=list)


def usage_sources(windows: list[Window]) -> UsageSources | None:
    """The monthly parts and hourly spans whose signed sums per window are the windows'
    usage; None when no window holds most of a UTC month (the hourly rows alone are cheaper)."""
    sources = UsageSources()
    for index, window in enumerate(windows):
        chosen = [month for month in _months_overlapping(window) if _mostly_inside(month, window)]
        if not chosen:
            sources.hours.append(HourlySpan(index, window.start, window.end, 1))
            continue
        first, last = chosen[0].start, chosen[-1].end
        sources.months.extend(MonthlyPart(index, month.start) for month in chosen)
        for start, end, sign in (
            (window.start, first, 1),  # the window's hours before its first month
            (last, window.end, 1),  # and after its last
            (first, window.start, -1),  # the first month's hours before the window
            (window.end, last, -1),  # the last month's hours after it
        ):
            if start < end:
                sources.hours.append(HourlySpan(index, start, end, sign))
    return sources if sources.months else None


def _months_overlapping(window: Window) -> list[Window]:
    months = []
    start = window.start.replace(day=1, hour=0)
    while start < window.end:
        end = _next_month_start(start)
        months.append(Window(start, end))
        start = end
    return months


def _mostly_inside(month: Window, window: Window) -> bool:
    inside = min(month.end, window.end) - max(month.start, window.start)
    return inside * 2 > month.end - month.start


def _next_month_start(month_start: datetime) -> datetime:
    return datetime(month_start.year + month_start.month // 12, month_start.month % 12 + 1, 1, tzinfo=UTC)
