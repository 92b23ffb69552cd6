"""Unit tests of the Redis key layout: group fields, dedupe keys, hour windows, tags,
tenant buckets, snapshots and registries."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from redis.crc import key_slot

from ingestor.pulses import keys
from ingestor.pulses.keys import (
    DEDUPE_PREFIX,
    dedupe_key_for_id,
    dedupe_key_for_position,
    group_field,
    hour_of,
    hour_stamp,
    hour_start,
    parse_group_field,
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


@pytest.mark.parametrize("field", [b'["a","b"]', b'["a","b","c","d"]', b"not json", b'["a","b","\xff"]'])
def test_parse_group_field_refuses_what_group_field_never_writes(field: bytes) -> None:
    with pytest.raises(ValueError):
        parse_group_field(field)


def test_parse_group_field_agrees_with_json_on_every_plain_and_escaped_field() -> None:
    import json

    for group in [("a", "b", "c"), ("\x01", "\x1f", "x"), ("tab\t", 'q"', "\\"), ("", "", "")]:
        field = group_field(*group)
        assert parse_group_field(field) == tuple(json.loads(field)) == group


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


def test_records_are_the_ones_the_previous_releases_wrote() -> None:
    # What Redis already holds was made by these functions in earlier releases: a v1
    # key, a fingerprint or a ledger scope that came out otherwise would miss it (a
    # pulse counted twice). Values from the release that wrote them.
    assert dedupe_key_for_id("acme", "pulse-1").hex() == "64aec5a90a90949b3f93cba6"
    assert dedupe_key_for_id("Ünïcødé", "a\ud800😀").hex() == "647da0e18cd6ca66dc58aa2b"
    assert keys.id_fingerprint("acme", "pulse-1").hex() == "596880685c03cbb992606c357b"
    assert keys.id_fingerprint("Ünïcødé", "a\ud800😀").hex() == "226b2a99992c00433afc0d847f"
    assert keys.place_fingerprint(b"\x01\x02scope", 7).hex() == "45cb61d6762ca59b5208bd5faa"
    assert dedupe_key_for_position("msg-1", 3).hex() == "64d65b6d685d65c24e431380"
    assert keys.dedupe_key_for_amqp_message("msg-1", 0).hex() == "644e6acfc1049e3ef5af42ff"
    assert keys.position_in_message("msg-1", 3).scope.hex() == "32e3b2a171b2a4b849a5b1"
    assert keys.id_index_members(keys.id_fingerprint("acme", "pulse-1")) == (
        "01011001011010001000",
        6630367074304683061,
        503912,
    )


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
    ("stamp", "expected_start", "expected_stamp"),
    [
        (
            datetime(2026, 11, 27, 23, 59, 59, tzinfo=UTC),
            datetime(2026, 11, 27, 23, tzinfo=UTC),
            "2026-11-27T23",
        ),
        (
            datetime(2026, 11, 28, 1, 30, tzinfo=PLUS2),  # 23:30 UTC the day before
            datetime(2026, 11, 27, 23, tzinfo=UTC),
            "2026-11-27T23",
        ),
        (
            datetime(2026, 11, 28, 0, 0, 0, tzinfo=UTC),
            datetime(2026, 11, 28, 0, tzinfo=UTC),
            "2026-11-28T00",
        ),
        (
            datetime(2026, 11, 28, 2, 0, 0, tzinfo=PLUS2),  # exactly 00:00 UTC
            datetime(2026, 11, 28, 0, tzinfo=UTC),
            "2026-11-28T00",
        ),
        (
            datetime(2026, 12, 31, 20, 45, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
            datetime(2027, 1, 1, 2, tzinfo=UTC),
            "2027-01-01T02",
        ),
        (
            datetime(2024, 2, 29, 12, 0, 0, 1, tzinfo=UTC),
            datetime(2024, 2, 29, 12, tzinfo=UTC),
            "2024-02-29T12",
        ),
    ],
)
def test_timestamps_fall_in_their_utc_hour(
    stamp: datetime, expected_start: datetime, expected_stamp: str
) -> None:
    hour = hour_of(stamp)
    assert hour_start(hour) == expected_start
    assert hour_start(hour).utcoffset() == timedelta(0)
    assert hour_stamp(hour) == expected_stamp
    assert keys.window_bucket_key("0.0", hour, 7) == f"ingestor:{{0.0}}:w:{expected_stamp}:0007"
    assert keys.hour_of_stamp(hour_stamp(hour)) == hour
    assert hour_start(hour) <= stamp < hour_start(hour) + timedelta(hours=1)


def test_two_offsets_of_the_same_hour_share_a_window() -> None:
    late_utc = datetime(2026, 11, 27, 23, 59, 59, tzinfo=UTC)
    early_plus2 = datetime(2026, 11, 28, 1, 30, tzinfo=PLUS2)
    assert hour_of(late_utc) == hour_of(early_plus2)
    assert hour_of(datetime(2026, 11, 28, 0, 0, tzinfo=UTC)) == hour_of(late_utc) + 1


def test_hour_stamps_round_trip_over_a_range() -> None:
    first = hour_of(datetime(2026, 10, 20, tzinfo=UTC))
    for hour in range(first, first + 24 * 40):
        assert keys.hour_of_stamp(hour_stamp(hour)) == hour
        assert hour_of(hour_start(hour)) == hour


def test_hour_of_stamp_rejects_other_text() -> None:
    for text in ("2026-11-27", "2026-11-27T23:00", "w:2026-11-27T23", ""):
        with pytest.raises(ValueError):
            keys.hour_of_stamp(text)


# --- tags and tenant buckets --------------------------------------------------------


def test_a_single_node_has_one_tag_and_every_record_lands_in_it() -> None:
    assert keys.SHARD_TAG_COUNT == 1
    assert keys.SHARD_TAGS == ("0.0",)
    assert keys.tag_of_dedupe_key(dedupe_key_for_id("acme", "1")) == "0.0"
    assert keys.tag_of_record(b"\xff" * 17) == "0.0"


@pytest.mark.parametrize("count", [1, 2, 4, 16, 64])
def test_tag_i_lies_in_the_i_th_slot_range_and_is_the_shortest_such_name(count: int) -> None:
    tags = keys.shard_tags(count)
    width = 16384 // count
    assert len(set(tags)) == count
    for i, tag in enumerate(tags):
        assert tag.startswith(f"{i}.")
        assert i * width <= key_slot(tag.encode()) < (i + 1) * width
        j = int(tag.split(".")[1])
        assert all(not i * width <= key_slot(f"{i}.{k}".encode()) < (i + 1) * width for k in range(j))


def test_the_number_of_tags_must_be_a_power_of_two() -> None:
    for count in (0, 3, 6, -1):
        with pytest.raises(ValueError, match="power of two"):
            keys.shard_tags(count)


def test_a_record_s_tag_is_its_first_64_bits_modulo_the_tags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "SHARD_TAGS", keys.shard_tags(4))
    assert keys.tag_of_record(bytes([0] * 7 + [6]) + b"rest") == keys.SHARD_TAGS[2]
    assert keys.tag_of_record(bytes([255] * 8)) == keys.SHARD_TAGS[3]


def test_the_tenant_bucket_is_blake2b_8_of_its_utf8_mod_1024() -> None:
    import hashlib

    for tenant in ("acme", "Ünïcødé", "", "a" * 128):
        digest = hashlib.blake2b(tenant.encode(), digest_size=8).digest()
        assert keys.bucket_of(tenant) == int.from_bytes(digest, "big") % 1024
    assert keys.BUCKETS == 1024
    buckets = {keys.bucket_of(f"tenant-{i}") for i in range(5000)}
    assert len(buckets) > 950  # spread over (nearly) every bucket


def test_a_tenant_s_window_key_is_its_bucket_with_the_tag_braced() -> None:
    hour = hour_of(datetime(2026, 11, 27, 23, 15, tzinfo=UTC))
    key = keys.window_key("0.0", hour, "acme")
    assert key == f"ingestor:{{0.0}}:w:2026-11-27T23:{keys.bucket_of('acme'):04d}"
    assert keys.tag_of_key(key) == "0.0"
    assert keys.live_field_of_window(key) == "w:2026-11-27T23" == keys.live_field(hour)
    assert key_slot(key.encode()) == key_slot(b"0.0") == key_slot(keys.registry_key("0.0").encode())
    assert keys.window_bucket_keys("0.0", hour)[keys.bucket_of("acme")] == key
    assert len(set(keys.window_bucket_keys("0.0", hour))) == 1024


def test_snapshot_bucket_keys_carry_the_batch_and_the_same_bucket() -> None:
    hour = hour_of(datetime(2026, 11, 27, 23, tzinfo=UTC))
    batch_id = uuid.uuid4()
    snapshots = keys.snapshot_bucket_keys("0.0", hour, batch_id)
    assert snapshots[42] == f"ingestor:{{0.0}}:s:2026-11-27T23:{batch_id}:0042"
    assert snapshots[42] == keys.snapshot_bucket_key("0.0", hour, batch_id, 42)
    assert len(set(snapshots)) == 1024
    assert not set(snapshots) & set(keys.window_bucket_keys("0.0", hour))


@pytest.mark.parametrize("tenant", ["acme", 'say "hi"', "a\\b", "Ünïcødé", "a,b", "[x]", ""])
def test_the_tenant_prefix_starts_exactly_its_own_group_fields(tenant: str) -> None:
    prefix = keys.tenant_field_prefix(tenant)
    assert group_field(tenant, "vm", "h").startswith(prefix)
    for other in (tenant + "x", tenant + '"', "x" + tenant, tenant[:-1]):
        if other != tenant:
            assert not group_field(other, "vm", "h").startswith(prefix)
    # Even when the sku looks like the rest of a longer tenant.
    assert not group_field(tenant + '",', "vm", "h").startswith(prefix)


# --- registries ------------------------------------------------------------------


def test_a_registry_is_parsed_into_version_live_hours_and_batches() -> None:
    hour = hour_of(datetime(2026, 11, 27, 23, tzinfo=UTC))
    pending, done, corrupt = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    registry = keys.parse_registry(
        "0.0",
        {
            b"v": b"7",
            b"w:2026-11-27T23": b"1",
            b"w:2026-11-28T00": b"1",
            f"s:{pending}".encode(): b"2026-11-27T23|p",
            f"s:{done}".encode(): b"2026-11-27T22|d|1700000000123",
            f"s:{corrupt}".encode(): b"2026-11-27T21|c",
        },
    )
    assert registry.version == 7
    assert registry.live_hours == (hour, hour + 1)
    assert registry.in_state("p") == [keys.SnapshotEntry(pending, hour, "p")]
    assert registry.in_state("d") == [keys.SnapshotEntry(done, hour - 1, "d", 1700000000123)]
    assert registry.in_state("c") == [keys.SnapshotEntry(corrupt, hour - 2, "c")]
    assert keys.parse_registry("0.0", {}) == keys.Registry("0.0", 0, (), ())


@pytest.mark.parametrize(
    "field",
    [
        {b"x": b"1"},
        {b"v": b"seven"},
        {b"w:yesterday": b"1"},
        {b"s:not-a-uuid": b"2026-11-27T23|p"},
        {f"s:{uuid.UUID(int=1)}".encode(): b"2026-11-27T23|q"},
        {f"s:{uuid.UUID(int=1)}".encode(): b"2026-11-27T23|d"},
        {f"s:{uuid.UUID(int=1)}".encode(): b"2026-11-27T23|p|5"},
    ],
)
def test_a_registry_field_the_ingestor_never_writes_is_named(field: dict[bytes, bytes]) -> None:
    with pytest.raises(keys.CorruptRegistry, match=re.escape("ingestor:{0.0}:pending")):
        keys.parse_registry("0.0", field)


def test_key_prefixes() -> None:
    assert keys.registry_key("0.0") == "ingestor:{0.0}:pending"
    assert keys.LEGACY_WINDOW_PREFIX == "ingestor:window:"
    assert keys.LEGACY_SNAPSHOT_PREFIX == "ingestor:snapshot:"
    assert keys.legacy_window_key(0) == "ingestor:window:1970-01-01T00"
    assert keys.COUNT_FIELD_PREFIX == b"n|"
    assert keys.AMOUNT_FIELD_PREFIX == b"a|"
