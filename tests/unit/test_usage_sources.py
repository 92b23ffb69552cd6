"""usage_sources: which monthly rows and signed hourly spans answer each window (pure)."""

from __future__ import annotations

from datetime import datetime

from ingestor.pulses.usage_sources import HourlySpan, MonthlyPart, usage_sources
from ingestor.pulses.usage_windows import usage_windows


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_a_utc_month_is_its_monthly_rows_alone():
    sources = usage_sources(usage_windows(at("2026-11-01T00:00Z"), at("2026-12-01T00:00Z"), "month", "UTC"))
    assert sources is not None
    assert sources.months == [MonthlyPart(0, at("2026-11-01T00:00Z"))]
    assert sources.hours == []


def test_berlins_november_is_utc_november_minus_its_last_hour_plus_octobers_last():
    windows = usage_windows(at("2026-10-31T23:00Z"), at("2026-11-30T23:00Z"), "month", "Europe/Berlin")
    sources = usage_sources(windows)
    assert sources is not None
    assert sources.months == [MonthlyPart(0, at("2026-11-01T00:00Z"))]
    assert sources.hours == [
        HourlySpan(0, at("2026-10-31T23:00Z"), at("2026-11-01T00:00Z"), 1),
        HourlySpan(0, at("2026-11-30T23:00Z"), at("2026-12-01T00:00Z"), -1),
    ]


def test_a_month_at_most_half_inside_a_window_is_read_by_hours():
    # 15 days of a 30-day month: exactly half, not more.
    windows = usage_windows(at("2026-11-01T00:00Z"), at("2026-11-16T00:00Z"), None, "UTC")
    assert usage_sources(windows) is None
    windows = usage_windows(at("2026-11-01T00:00Z"), at("2026-11-16T01:00Z"), None, "UTC")
    sources = usage_sources(windows)
    assert sources is not None
    assert sources.hours == [HourlySpan(0, at("2026-11-16T01:00Z"), at("2026-12-01T00:00Z"), -1)]


def test_days_and_hours_never_read_monthly_rows():
    for size in ("day", "hour"):
        windows = usage_windows(at("2026-10-01T00:00Z"), at("2026-11-01T00:00Z"), size, "America/New_York")
        assert usage_sources(windows) is None


def test_a_range_of_months_uses_each_month_mostly_inside_it_once():
    windows = usage_windows(at("2026-08-10T00:00Z"), at("2026-11-10T00:00Z"), None, "UTC")
    sources = usage_sources(windows)
    assert sources is not None
    assert [part.month_start for part in sources.months] == [
        at("2026-08-01T00:00Z"),
        at("2026-09-01T00:00Z"),
        at("2026-10-01T00:00Z"),
    ]
    assert sources.hours == [
        HourlySpan(0, at("2026-11-01T00:00Z"), at("2026-11-10T00:00Z"), 1),
        HourlySpan(0, at("2026-08-01T00:00Z"), at("2026-08-10T00:00Z"), -1),
    ]
