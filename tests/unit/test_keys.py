"""Unit tests of the Redis key layout: group fields, dedupe keys, hour windows, snapshots."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from ingestor.pulses import keys
from ingestor.pulses.keys import (
    DEDUPE_PREFIX,
    SNAPSHOT_PREFIX,
    WINDOW_PREFIX,
    batch_id_of_snapshot,
    dedupe_key_for_id,
    dedupe_key_for_position,
    group_field,
    hour_of,
    hour_start,
    new_snapshot_key,
    parse_group_field,
    window_key,
    window_start_of_key,
)

UTC = UTC
PLUS2 = timezone(timedelta(hours=2))

# --- group fields -----------------------------------------------------------------


@pytest.mark.parametrize(
    "group",
    [
        ("acme", "vm.small", "GB"),
        ("a:b", "c", "d"),
        ("a", "b:c", "d"),
        ("a|b", "n|x", "a|"),
        ('say "hi"', '"', '\\"'),
        ("[", "]", '["a","b","c"]'),
        ("Ünïcødé", "テナント", "😀"),
        ("a, b", "c", "KB/sec"),
        (" ", "  ", "\\"),
    ],
)
def test_group_field_round_trips(group: tuple[str, str, str]) -> None:
    field = group_field(*group)
    assert isinstance(field, bytes)
    assert parse_group_field(field) == group


def test_group_field_is_compact_json_array_of_utf8() -> None:
    # Compact: the flush turns '["t","s","u"]' into a CSV row by dropping the brackets.
    assert group_field("é", "s", "u") == '["é","s","u"]'.encode()


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (("a:b", "c", "d"), ("a", "b:c", "d")),
        (("a", "b:c", "d"), ("a", "b", "c:d")),
        (("a|b", "c", "d"), ("a", "b|c", "d")),
        (('a","b', "c", "d"), ("a", 'b","c', "d")),
        (("a", "", "b"), ("a", "b", "")),
    ],
)
def test_look_alike_groups_give_different_fields(
    left: tuple[str, str, str], right: tuple[str, str, str]
) -> None:
    assert group_field(*left) != group_field(*right)
    assert parse_group_field(group_field(*left)) == left
    assert parse_group_field(group_field(*right)) == right


def test_group_field_is_deterministic() -> None:
    assert group_field("t", "s", "u") == group_field("t", "s", "u")


# --- dedupe keys ------------------------------------------------------------------


def test_id_key_is_stable_and_12_bytes() -> None:
    key = dedupe_key_for_id("acme", "pulse-1")
    assert key == dedupe_key_for_id("acme", "pulse-1")
    # 12 bytes: the smallest allocation class of a Redis key (see keys.py).
    assert len(key) == 12
    assert key.startswith(DEDUPE_PREFIX)
    assert DEDUPE_PREFIX == b"d"


def test_position_key_is_stable_and_12_bytes() -> None:
    key = dedupe_key_for_position("task-123", 7)
    assert key == dedupe_key_for_position("task-123", 7)
    assert len(key) == 12
    assert key.startswith(DEDUPE_PREFIX)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (("a:b", "c"), ("a", "b:c")),
        (("a", "bc"), ("ab", "c")),
        (("1:a", "b"), ("1", "a:b")),  # length-prefix look-alikes
        (("acme", "1"), ("acme", "2")),
        (("acme", "1"), ("other", "1")),
        (("", "x"), ("x", "")),
    ],
)
def test_distinct_id_inputs_give_distinct_keys(left: tuple[str, str], right: tuple[str, str]) -> None:
    assert dedupe_key_for_id(*left) != dedupe_key_for_id(*right)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (("m", 12), ("m1", 2)),
        (("m:1", 2), ("m", 12)),
        (("task", 0), ("task", 1)),
        (("task-a", 0), ("task-b", 0)),
    ],
)
def test_distinct_position_inputs_give_distinct_keys(left: tuple[str, int], right: tuple[str, int]) -> None:
    assert dedupe_key_for_position(*left) != dedupe_key_for_position(*right)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("acme", "0"),
        ("task-1", "0"),
        ("t", "7"),
        ("", "0"),
        ("pos", "1"),
        ("id", "0"),
    ],
)
def test_id_and_position_keys_never_collide_for_look_alike_inputs(first: str, second: str) -> None:
    assert dedupe_key_for_id(first, second) != dedupe_key_for_position(first, int(second))


def test_dedupe_keys_of_many_inputs_are_all_distinct() -> None:
    produced = {dedupe_key_for_id("t", str(i)) for i in range(500)}
    produced |= {dedupe_key_for_position("t", i) for i in range(500)}
    assert len(produced) == 1000


def test_unicode_and_lone_surrogates_are_keyed() -> None:
    assert dedupe_key_for_id("Ünïcødé", "😀") != dedupe_key_for_id("Unicode", "😀")
    assert len(dedupe_key_for_id("a\ud800", "x")) == 12


# --- hour windows -----------------------------------------------------------------


def test_hour_of_epoch_and_known_hour() -> None:
    assert hour_of(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert hour_of(datetime(1970, 1, 1, 1, 0, 0, tzinfo=UTC)) == 1
    assert hour_of(datetime(1970, 1, 1, 0, 59, 59, 999999, tzinfo=UTC)) == 0
    assert hour_start(hour_of(datetime(2026, 11, 27, 23, 0, tzinfo=UTC))) == datetime(
        2026, 11, 27, 23, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("stamp", "expected_start", "expected_key"),
    [
        (
            datetime(2026, 11, 27, 23, 59, 59, tzinfo=UTC),
            datetime(2026, 11, 27, 23, tzinfo=UTC),
            "ingestor:window:2026-11-27T23",
        ),
        (
            datetime(2026, 11, 28, 1, 30, tzinfo=PLUS2),  # 23:30 UTC the day before
            datetime(2026, 11, 27, 23, tzinfo=UTC),
            "ingestor:window:2026-11-27T23",
        ),
        (
            datetime(2026, 11, 28, 0, 0, 0, tzinfo=UTC),
            datetime(2026, 11, 28, 0, tzinfo=UTC),
            "ingestor:window:2026-11-28T00",
        ),
        (
            datetime(2026, 11, 28, 2, 0, 0, tzinfo=PLUS2),  # exactly 00:00 UTC
            datetime(2026, 11, 28, 0, tzinfo=UTC),
            "ingestor:window:2026-11-28T00",
        ),
        (
            datetime(2026, 12, 31, 20, 45, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
            datetime(2027, 1, 1, 2, tzinfo=UTC),
            "ingestor:window:2027-01-01T02",
        ),
        (
            datetime(2024, 2, 29, 12, 0, 0, 1, tzinfo=UTC),
            datetime(2024, 2, 29, 12, tzinfo=UTC),
            "ingestor:window:2024-02-29T12",
        ),
    ],
)
def test_timestamps_fall_in_their_utc_hour(
    stamp: datetime, expected_start: datetime, expected_key: str
) -> None:
    hour = hour_of(stamp)
    assert hour_start(hour) == expected_start
    assert hour_start(hour).utcoffset() == timedelta(0)
    assert window_key(hour) == expected_key
    assert window_start_of_key(window_key(hour)) == expected_start
    assert hour_start(hour) <= stamp < hour_start(hour) + timedelta(hours=1)


def test_two_offsets_of_the_same_hour_share_a_window() -> None:
    late_utc = datetime(2026, 11, 27, 23, 59, 59, tzinfo=UTC)
    early_plus2 = datetime(2026, 11, 28, 1, 30, tzinfo=PLUS2)
    assert hour_of(late_utc) == hour_of(early_plus2)
    assert hour_of(datetime(2026, 11, 28, 0, 0, tzinfo=UTC)) == hour_of(late_utc) + 1


def test_hour_start_window_key_round_trip_over_a_range() -> None:
    first = hour_of(datetime(2026, 10, 20, tzinfo=UTC))
    for hour in range(first, first + 24 * 40):
        assert window_start_of_key(window_key(hour)) == hour_start(hour)
        assert hour_of(hour_start(hour)) == hour


def test_window_start_of_key_rejects_other_keys() -> None:
    with pytest.raises(ValueError):
        window_start_of_key("ingestor:windows")
    with pytest.raises(ValueError):
        window_start_of_key("other:window:2026-11-27T23")


# --- snapshots --------------------------------------------------------------------


def test_new_snapshot_key_round_trips() -> None:
    window = window_key(hour_of(datetime(2026, 11, 27, 23, 15, tzinfo=UTC)))
    snapshot, batch_id = new_snapshot_key(window)
    assert isinstance(batch_id, uuid.UUID)
    assert snapshot == f"{SNAPSHOT_PREFIX}2026-11-27T23:{batch_id}"
    assert snapshot.startswith(SNAPSHOT_PREFIX)
    assert not snapshot.startswith(WINDOW_PREFIX)
    assert batch_id_of_snapshot(snapshot) == batch_id
    assert window_start_of_key(snapshot) == datetime(2026, 11, 27, 23, tzinfo=UTC)
    assert window_start_of_key(snapshot) == window_start_of_key(window)


def test_each_snapshot_gets_a_fresh_batch_id() -> None:
    window = window_key(hour_of(datetime(2026, 11, 27, 23, tzinfo=UTC)))
    made = [new_snapshot_key(window) for _ in range(50)]
    assert len({batch_id for _, batch_id in made}) == 50
    assert len({key for key, _ in made}) == 50


def test_key_prefixes() -> None:
    assert keys.WINDOW_PREFIX == "ingestor:window:"
    assert keys.SNAPSHOT_PREFIX == "ingestor:snapshot:"
    assert keys.COUNT_FIELD_PREFIX == b"n|"
    assert keys.AMOUNT_FIELD_PREFIX == b"a|"
