"""How a flush pairs a snapshot's fields, in whatever order HSCAN returns them."""

from __future__ import annotations

import csv
import io
from collections import Counter
from itertools import permutations

import pytest

from ingestor.pulses.keys import AMOUNT_FIELD_PREFIX, COUNT_FIELD_PREFIX, group_field
from ingestor.pulses.snapshot_rows import CorruptSnapshot, snapshot_chunks

NEAR_MAX = 2**63 - 1
WINDOW = b"2026-11-28T02:00:00+00:00"


def micro_units(units: str) -> int:
    """Exact inverse of the rows' units text (six decimals, always)."""
    whole, _, fraction = units.partition(".")
    assert len(fraction) == 6, units
    return int(whole) * 1_000_000 + int(fraction)


def count_field(*group: str) -> bytes:
    return COUNT_FIELD_PREFIX + group_field(*group)


def amount_field(*group: str, spill: int = 0) -> bytes:
    return (AMOUNT_FIELD_PREFIX if not spill else b"a%d|" % spill) + group_field(*group)


def totals(fields, chunk_groups: int = 10_000) -> dict[tuple[str, str, str], tuple[int, int]]:
    """What the chunks say: micro-units and pulses per group (late amounts added in)."""
    micro: Counter = Counter()
    pulses: Counter = Counter()
    sent = []
    for chunk in snapshot_chunks(fields, WINDOW, chunk_groups):
        for tenant, sku, unit, window, units, count in csv.reader(io.StringIO(chunk.csv.decode())):
            assert window == WINDOW.decode()
            sent.append((tenant, sku, unit))
            micro[(tenant, sku, unit)] += micro_units(units)
            pulses[(tenant, sku, unit)] += int(count)
        for tenant, sku, unit, units in csv.reader(io.StringIO(chunk.late_amounts.decode())):
            assert (tenant, sku, unit) in sent, "a late amount for a group never sent"
            micro[(tenant, sku, unit)] += micro_units(units)
    assert len(sent) == len(set(sent)), "a group sent twice would hit its row twice in one upsert"
    return {group: (micro[group], pulses[group]) for group in pulses}


@pytest.mark.parametrize("order", list(permutations(range(4))))
def test_every_arrival_order_sums_count_amount_and_spills(order):
    group = ("acme", "vm", "GB")
    fields = [
        (count_field(*group), b"5"),
        (amount_field(*group), str(NEAR_MAX).encode()),
        (amount_field(*group, spill=1), str(NEAR_MAX).encode()),
        (amount_field(*group, spill=2), b"7"),
    ]

    assert totals([fields[i] for i in order]) == {group: (2 * NEAR_MAX + 7, 5)}


def test_fields_returned_twice_count_once_and_zero_amounts_are_sent():
    a, b = ("a", "s", "u"), ("b", "s", "u")
    fields = [
        (count_field(*a), b"2"),
        (amount_field(*a), b"10"),
        (count_field(*a), b"2"),
        (count_field(*b), b"1"),
        (amount_field(*a), b"10"),
    ]

    assert totals(fields) == {a: (10, 2), b: (0, 1)}


def test_groups_with_quotes_commas_and_unicode_survive_csv():
    tricky = [
        ('quo"te,', "[", "]"),
        ("back\\slash", "'", "x"),
        ("Ünïcødé", "テナント", "😀"),
        ("a|b", "n|x", "KB/sec"),
    ]
    fields = [f for g in tricky for f in ((count_field(*g), b"1"), (amount_field(*g), b"3"))]

    assert totals(fields) == {g: (3, 1) for g in tricky}


def test_chunks_hold_at_most_the_chunk_size():
    fields = [
        f
        for n in range(5)
        for f in ((count_field(f"t{n}", "s", "u"), b"1"), (amount_field(f"t{n}", "s", "u"), b"1"))
    ]
    chunks = list(snapshot_chunks(fields, WINDOW, chunk_groups=2))

    assert [c.groups for c in chunks] == [2, 2, 1]
    assert sum(c.pulses for c in chunks) == 5


@pytest.mark.parametrize(
    "bad",
    [
        (b"x|" + group_field("t", "s", "u"), b"1"),
        (b"a1x|" + group_field("t", "s", "u"), b"1"),
        (amount_field("orphan", "s", "u"), b"1"),
    ],
)
def test_fields_the_script_never_writes_are_corruption(bad):
    fields = [(count_field("t", "s", "u"), b"1"), (amount_field("t", "s", "u"), b"1"), bad]
    with pytest.raises(CorruptSnapshot):
        list(snapshot_chunks(fields, WINDOW))


@pytest.mark.parametrize(
    "fields",
    [
        [(count_field("t", "s", "u"), b"1"), (amount_field("t", "s", "u"), b"12x")],  # amount not an integer
        [(count_field("t", "s", "u"), b"-1")],  # count not a non-negative integer
        [(count_field("t", "s", "u"), b"0")],  # the script never counts zero pulses
        [(b'n|["t", "s", "u"]', b"1")],  # spaces: not as keys.group_field writes it
        [(b'n|["t","s"]', b"1")],  # two values, not three
        [(b'n|["t",1,"u"]', b"1")],  # a number, not a string
        [(b'n|["t","s","\xff"]', b"1")],
    ],  # not UTF-8
)
def test_values_and_groups_the_script_never_writes_are_corruption(fields):
    with pytest.raises(CorruptSnapshot):
        list(snapshot_chunks(fields, WINDOW))
