"""The windows of a usage query: [from, to) cut by hour, day or month in an IANA zone.

Usage is stored per UTC hour, so a window is answerable exactly only if its bounds are
whole UTC hours. Days and months start at local midnight (the first instant of the
local date: a DST day is 23 or 25 hours long); hours are the UTC hours themselves, in
every zone. A zone whose offset is not a whole number of hours (Asia/Kolkata +05:30,
Asia/Kathmandu +05:45) puts local midnight inside a UTC hour: a day or month boundary
in range is then refused rather than answered with a share of an hour.

All zone arithmetic is here, with `zoneinfo` reading the pinned `tzdata` package only
(not the machine's /usr/share/zoneinfo, which `ZoneInfo(name)` would prefer): one
time zone database for every answer, whatever the host's or PostgreSQL's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from importlib import resources
from itertools import pairwise
from zoneinfo import ZoneInfo

WINDOW_SIZES = ("hour", "day", "month")
MAX_RANGE = timedelta(days=400)
# Bounds are refused outside these years: far from datetime's own limits (years 1 and
# 9999), where converting to UTC or finding the next local month would overflow.
FIRST_YEAR, LAST_YEAR = 1900, 9000
_HOUR = timedelta(hours=1)


class WindowsRefused(ValueError):
    """The range cannot be cut into exact windows; `parameter` names the query parameter at fault."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


@dataclass(frozen=True, slots=True)
class Window:
    """A half-open window [start, end) as UTC instants."""

    start: datetime
    end: datetime


def time_zone_of(name: str) -> ZoneInfo:
    """The IANA zone `name` from the pinned tzdata; WindowsRefused (naming `time_zone`)
    when tzdata has no such zone."""
    if name not in _zone_names():
        raise WindowsRefused(
            "time_zone", f"Unknown time zone {name!r}: give an IANA name such as Europe/Berlin."
        )
    return _zone(name)


@cache
def _zone_names() -> frozenset[str]:
    return frozenset(resources.files("tzdata").joinpath("zones").read_text(encoding="utf-8").split())


@cache
def _zone(name: str) -> ZoneInfo:
    # Only names listed by tzdata's own index reach here: no path of the caller's choosing.
    with resources.files("tzdata.zoneinfo").joinpath(*name.split("/")).open("rb") as data:
        return ZoneInfo.from_file(data, key=name)


def usage_windows(
    window_from: datetime, window_to: datetime, window_size: str | None, time_zone: str
) -> list[Window]:
    """The windows of [window_from, window_to) by `window_size` ("hour", "day", "month",
    None: one window) in `time_zone`, as UTC instants, in order, clipped to the range.

    Raises WindowsRefused when the bounds are not aware whole UTC hours in order, the
    range is longer than MAX_RANGE, the zone or size is unknown, or a window boundary
    inside the range does not fall on a whole UTC hour.
    """
    zone = time_zone_of(time_zone)
    start, end = _whole_hour("from", window_from), _whole_hour("to", window_to)
    if start >= end:
        raise WindowsRefused(
            "to", f"'to' ({window_to.isoformat()}) must be after 'from' ({window_from.isoformat()})."
        )
    if end - start > MAX_RANGE:
        raise WindowsRefused(
            "to", f"The range is {end - start} long; at most {MAX_RANGE.days} days are answered."
        )
    if window_size is None:
        return [Window(start, end)]
    if window_size == "hour":
        hours = int((end - start) / _HOUR)
        return [Window(start + i * _HOUR, start + (i + 1) * _HOUR) for i in range(hours)]
    if window_size not in WINDOW_SIZES:
        raise WindowsRefused(
            "window_size", f"Unknown window_size {window_size!r}: one of {', '.join(WINDOW_SIZES)}."
        )
    boundaries = _local_boundaries(start, end, window_size, zone)
    for boundary in boundaries:
        if start < boundary < end and (boundary.minute, boundary.second, boundary.microsecond) != (0, 0, 0):
            raise WindowsRefused(
                "time_zone",
                f"{time_zone} starts a {window_size} at {boundary.astimezone(zone).isoformat()}"
                f" ({boundary.isoformat()}), inside a UTC hour; usage is kept per UTC hour, so"
                f" {window_size} windows in this zone cannot be exact: use a zone whose offset"
                " is a whole number of hours, or window_size=hour.",
            )
    cuts = [start, *(b for b in boundaries if start < b < end), end]
    return [Window(a, b) for a, b in pairwise(cuts)]


def _whole_hour(parameter: str, value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise WindowsRefused(
            parameter, f"'{parameter}' needs an offset (e.g. +00:00 or Z): {value.isoformat()}."
        )
    if not FIRST_YEAR <= value.year <= LAST_YEAR:
        raise WindowsRefused(
            parameter,
            f"'{parameter}' ({value.isoformat()}) must be in the years {FIRST_YEAR} to {LAST_YEAR}.",
        )
    instant = value.astimezone(UTC)
    if (instant.minute, instant.second, instant.microsecond) != (0, 0, 0):
        raise WindowsRefused(
            parameter,
            f"'{parameter}' ({value.isoformat()}) is not a whole UTC hour ({instant.isoformat()});"
            " usage is kept per UTC hour.",
        )
    return instant


def _local_boundaries(start: datetime, end: datetime, window_size: str, zone: ZoneInfo) -> list[datetime]:
    """The UTC instants where a local day or month begins, from the one at or before
    `start` to the first at or after `end`."""
    first = start.astimezone(zone).date()
    day = first.replace(day=1) if window_size == "month" else first
    boundaries = []
    while True:
        boundary = _first_instant_of(day, zone)
        boundaries.append(boundary)
        if boundary >= end:
            return boundaries
        day = _next_month(day) if window_size == "month" else day + timedelta(days=1)


def _first_instant_of(day: date, zone: ZoneInfo) -> datetime:
    """The UTC instant local `day` begins. Midnight skipped by a DST gap resolves (fold=0)
    with the offset before the gap, which is the gap's instant: the day's first one."""
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def _next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)
