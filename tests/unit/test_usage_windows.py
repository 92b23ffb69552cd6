"""The windows of a usage query: DST days, months, clipping, zones that split UTC hours."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from ingestor.pulses.usage_windows import MAX_RANGE, Window, WindowsRefused, time_zone_of, usage_windows


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def lengths(windows: list[Window]) -> list[float]:
    return [(w.end - w.start) / timedelta(hours=1) for w in windows]


@pytest.mark.parametrize(
    ("zone", "spring_midnight", "fall_midnight"),
    [
        ("Europe/Berlin", utc(2026, 3, 28, 23), utc(2026, 10, 24, 22)),
        ("America/New_York", utc(2026, 3, 8, 5), utc(2026, 11, 1, 4)),
    ],
)
def test_dst_days_are_23_and_25_hours_long(zone, spring_midnight, fall_midnight) -> None:
    spring = usage_windows(
        spring_midnight - timedelta(days=1), spring_midnight + timedelta(days=2), "day", zone
    )
    assert lengths(spring) == [24, 23, 24, 1]
    fall = usage_windows(fall_midnight - timedelta(days=1), fall_midnight + timedelta(days=2), "day", zone)
    assert lengths(fall) == [24, 25, 23]


def test_berlin_days_around_the_spring_change_start_at_local_midnight() -> None:
    days = usage_windows(utc(2026, 3, 28, 23), utc(2026, 3, 30, 22), "day", "Europe/Berlin")
    assert days == [
        Window(utc(2026, 3, 28, 23), utc(2026, 3, 29, 22)),  # 29 March: 23 hours
        Window(utc(2026, 3, 29, 22), utc(2026, 3, 30, 22)),
    ]


def test_new_york_fall_day_is_25_hours() -> None:
    [day] = usage_windows(utc(2026, 11, 1, 4), utc(2026, 11, 2, 5), "day", "America/New_York")
    assert (day.start, day.end) == (utc(2026, 11, 1, 4), utc(2026, 11, 2, 5))
    assert lengths([day]) == [25]


def test_months_include_february_of_a_leap_year_and_the_year_change() -> None:
    months = usage_windows(utc(2027, 12, 1), utc(2028, 4, 1), "month", "UTC")
    assert [w.start for w in months] == [utc(2027, 12, 1), utc(2028, 1, 1), utc(2028, 2, 1), utc(2028, 3, 1)]
    assert lengths(months)[2] == 29 * 24  # February 2028
    february_2027 = usage_windows(utc(2027, 2, 1), utc(2027, 3, 1), "month", "UTC")
    assert lengths(february_2027) == [28 * 24]


def test_berlin_months_start_at_local_midnight_and_march_loses_an_hour() -> None:
    months = usage_windows(utc(2026, 1, 31, 23), utc(2026, 4, 30, 22), "month", "Europe/Berlin")
    assert [w.start for w in months] == [utc(2026, 1, 31, 23), utc(2026, 2, 28, 23), utc(2026, 3, 31, 22)]
    assert lengths(months)[1] == 31 * 24 - 1


def test_windows_are_clipped_to_the_range() -> None:
    days = usage_windows(utc(2026, 5, 1, 10), utc(2026, 5, 3, 7), "day", "UTC")
    assert days == [
        Window(utc(2026, 5, 1, 10), utc(2026, 5, 2)),
        Window(utc(2026, 5, 2), utc(2026, 5, 3)),
        Window(utc(2026, 5, 3), utc(2026, 5, 3, 7)),
    ]
    [month] = usage_windows(utc(2026, 5, 10), utc(2026, 5, 20), "month", "UTC")
    assert month == Window(utc(2026, 5, 10), utc(2026, 5, 20))


def test_hours_and_a_single_total() -> None:
    hours = usage_windows(utc(2026, 5, 1, 22), utc(2026, 5, 2, 1), "hour", "Asia/Kolkata")
    assert [w.start.hour for w in hours] == [22, 23, 0] and lengths(hours) == [1, 1, 1]
    assert usage_windows(utc(2026, 5, 1), utc(2026, 6, 1), None, "Asia/Kolkata") == [
        Window(utc(2026, 5, 1), utc(2026, 6, 1))
    ]


def test_bounds_in_another_offset_are_the_same_instants() -> None:
    plus_one = timezone(timedelta(hours=1))
    [day] = usage_windows(datetime(2026, 5, 2, 1, tzinfo=plus_one), utc(2026, 5, 2, 12), "day", "UTC")
    assert day.start == utc(2026, 5, 2) and day.start.tzinfo is UTC


@pytest.mark.parametrize(
    ("zone", "size"), [("Asia/Kolkata", "day"), ("Asia/Kolkata", "month"), ("Asia/Kathmandu", "day")]
)
def test_a_zone_whose_midnight_splits_a_utc_hour_is_refused_for_days_and_months(zone, size) -> None:
    with pytest.raises(WindowsRefused, match="inside a UTC hour") as refused:
        usage_windows(utc(2026, 5, 1), utc(2026, 7, 1), size, zone)
    assert refused.value.parameter == "time_zone"
    assert zone in str(refused.value)


def test_nepal_s_midnight_outside_the_range_is_no_reason_to_refuse() -> None:
    # Kathmandu (+05:45) midnight falls at 18:15 UTC: a range within one local day has none inside.
    assert usage_windows(utc(2026, 5, 1, 19), utc(2026, 5, 2, 18), "day", "Asia/Kathmandu") == [
        Window(utc(2026, 5, 1, 19), utc(2026, 5, 2, 18))
    ]


@pytest.mark.parametrize(
    ("window_from", "window_to", "parameter", "message"),
    [
        (utc(2026, 5, 1, 0, 30), utc(2026, 5, 2), "from", "not a whole UTC hour"),
        (utc(2026, 5, 1), utc(2026, 5, 2, 0, 0, 1), "to", "not a whole UTC hour"),
        (
            datetime(2026, 5, 1, 0, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
            utc(2026, 5, 2),
            "from",
            "not a whole",
        ),
        (datetime(2026, 5, 1), utc(2026, 5, 2), "from", "needs an offset"),
        (utc(2026, 5, 2), utc(2026, 5, 2), "to", "must be after"),
        (utc(2026, 5, 2), utc(2026, 5, 1), "to", "must be after"),
        (utc(2025, 1, 1), utc(2025, 1, 1) + MAX_RANGE + timedelta(hours=1), "to", "at most 400 days"),
    ],
)
def test_bounds_must_be_aware_whole_utc_hours_in_order_at_most_400_days_apart(
    window_from, window_to, parameter, message
) -> None:
    with pytest.raises(WindowsRefused, match=message) as refused:
        usage_windows(window_from, window_to, "day", "UTC")
    assert refused.value.parameter == parameter


def test_400_days_exactly_are_answered() -> None:
    assert len(usage_windows(utc(2025, 1, 1), utc(2025, 1, 1) + MAX_RANGE, "day", "UTC")) == 400


@pytest.mark.parametrize("zone", ["Mars/Olympus", "", "../etc/passwd", "Europe/Berlin\x00"])
def test_an_unknown_zone_is_refused_naming_time_zone(zone) -> None:
    with pytest.raises(WindowsRefused, match="Unknown time zone") as refused:
        usage_windows(utc(2026, 5, 1), utc(2026, 5, 2), "day", zone)
    assert refused.value.parameter == "time_zone"


def test_an_unknown_window_size_is_refused() -> None:
    with pytest.raises(WindowsRefused, match="Unknown window_size") as refused:
        usage_windows(utc(2026, 5, 1), utc(2026, 5, 2), "week", "UTC")
    assert refused.value.parameter == "window_size"


def test_zones_come_from_the_pinned_tzdata_not_the_host() -> None:
    # The host's /usr/share/zoneinfo has posix/ and right/ copies (leap seconds in right/),
    # which ZoneInfo(name) would read; the pinned tzdata has no such names.
    with pytest.raises(WindowsRefused, match="Unknown time zone"):
        time_zone_of("right/UTC")
    assert time_zone_of("Europe/Berlin").key == "Europe/Berlin"


@pytest.mark.parametrize(
    ("window_from", "window_to", "parameter"),
    [
        (datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))), utc(1, 1, 2), "from"),
        (utc(2026, 5, 1), datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-1))), "to"),
        (utc(9999, 12, 1), utc(9999, 12, 31), "from"),
    ],
)
def test_bounds_near_the_ends_of_the_calendar_are_refused_not_overflowing(
    window_from, window_to, parameter
) -> None:
    for size in ("day", "month"):
        with pytest.raises(WindowsRefused, match="in the years 1900 to 9000") as refused:
            usage_windows(window_from, window_to, size, "America/New_York")
        assert refused.value.parameter == parameter
