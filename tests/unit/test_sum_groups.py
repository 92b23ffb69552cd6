"""Unit tests of sum_groups: a window hash's fields turned into exact per-group sums."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ingestor.pulses.keys import AMOUNT_FIELD_PREFIX, COUNT_FIELD_PREFIX, group_field
from ingestor.pulses.persistence import GroupSum, sum_groups
from ingestor.pulses.schema import from_micro_units

NEAR_MAX = 2**63 - 1


def count_field(tenant: str, sku: str, unit: str) -> bytes:
    return COUNT_FIELD_PREFIX + group_field(tenant, sku, unit)


def amount_field(tenant: str, sku: str, unit: str, spill: int | None = None) -> bytes:
    prefix = AMOUNT_FIELD_PREFIX if spill is None else b"a%d|" % spill
    return prefix + group_field(tenant, sku, unit)


def by_group(sums: list[GroupSum]) -> dict[tuple[str, str, str], GroupSum]:
    return {(s.tenant, s.product_sku, s.use_unity): s for s in sums}


def test_empty_hash_gives_no_sums() -> None:
    assert sum_groups({}) == []


def test_one_group() -> None:
    fields = {
        count_field("acme", "vm.small", "GB"): b"3",
        amount_field("acme", "vm.small", "GB"): b"4500001",
    }
    assert sum_groups(fields) == [GroupSum("acme", "vm.small", "GB", Decimal("4.500001"), 3)]


def test_amount_is_decimal_with_six_fraction_digits() -> None:
    fields = {count_field("t", "s", "u"): b"1", amount_field("t", "s", "u"): b"1500000"}
    [result] = sum_groups(fields)
    assert isinstance(result.used_amount, Decimal)
    assert str(result.used_amount) == "1.500000"
    assert isinstance(result.pulse_count, int)


def test_spill_fields_are_summed_exactly_past_64_bits() -> None:
    fields = {
        count_field("acme", "vm", "GB"): b"5",
        amount_field("acme", "vm", "GB"): str(NEAR_MAX).encode(),
        amount_field("acme", "vm", "GB", spill=1): str(NEAR_MAX).encode(),
        amount_field("acme", "vm", "GB", spill=2): str(NEAR_MAX - 6).encode(),
    }
    total = 3 * NEAR_MAX - 6
    assert total > 2**64
    [result] = sum_groups(fields)
    assert result.pulse_count == 5
    assert result.used_amount == from_micro_units(total)
    assert result.used_amount == Decimal("27670116110564.327415")
    assert str(result.used_amount) == "27670116110564.327415"


def test_many_spills_stay_exact_past_28_digits() -> None:
    fields = {count_field("t", "s", "u"): b"1"}
    for spill in range(1, 10**4 + 1):
        fields[amount_field("t", "s", "u", spill=spill)] = str(NEAR_MAX).encode()
    fields[amount_field("t", "s", "u")] = b"1"
    [result] = sum_groups(fields)
    micro = 10**4 * NEAR_MAX + 1
    assert result.used_amount == from_micro_units(micro)
    sign, digits, exponent = result.used_amount.as_tuple()
    assert (sign, exponent) == (0, -6)
    assert int("".join(map(str, digits))) == micro


def test_groups_are_kept_apart_and_decoded() -> None:
    tricky = [
        ("a:b", "c", "d"),
        ("a", "b:c", "d"),
        ("a|b", "n|x", "KB/sec"),
        ('quo"te', "[", "]"),
        ("Ünïcødé", "テナント", "😀"),
    ]
    fields: dict[bytes, bytes] = {}
    for i, group in enumerate(tricky, start=1):
        fields[count_field(*group)] = str(i).encode()
        fields[amount_field(*group)] = str(i * 1_000_001).encode()
    sums = by_group(sum_groups(fields))
    assert set(sums) == set(tricky)
    for i, group in enumerate(tricky, start=1):
        assert sums[group].pulse_count == i
        assert sums[group].used_amount == Decimal(i * 1_000_001).scaleb(-6)


def test_group_with_count_but_no_amount_sums_to_zero() -> None:
    [result] = sum_groups({count_field("t", "s", "u"): b"2"})
    assert result == GroupSum("t", "s", "u", Decimal("0.000000"), 2)


def test_large_count() -> None:
    fields = {count_field("t", "s", "u"): str(NEAR_MAX).encode(), amount_field("t", "s", "u"): b"0"}
    [result] = sum_groups(fields)
    assert result.pulse_count == NEAR_MAX


@pytest.mark.parametrize(
    "name",
    [
        b"x|" + group_field("t", "s", "u"),
        b"c|" + group_field("t", "s", "u"),
        b"|" + group_field("t", "s", "u"),
        b"N|" + group_field("t", "s", "u"),
        b"abc|" + group_field("t", "s", "u"),
        b"a1x|" + group_field("t", "s", "u"),
    ],
)
def test_unexpected_field_kind_raises(name: bytes) -> None:
    fields = {count_field("t", "s", "u"): b"1", amount_field("t", "s", "u"): b"1", name: b"1"}
    with pytest.raises(ValueError):
        sum_groups(fields)


def test_amount_without_a_count_raises() -> None:
    # The Lua script writes both fields together: an amount alone is corruption, and
    # must stop the flush rather than be dropped silently.
    fields = {count_field("t", "s", "u"): b"1", amount_field("t", "s", "u"): b"1", amount_field("x", "s", "u"): b"5"}
    with pytest.raises(ValueError, match="without a pulse count"):
        sum_groups(fields)
