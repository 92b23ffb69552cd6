"""Hypothesis strategies: valid pulses, pulses made invalid on purpose, junk of every kind.

An invalid pulse is a valid one with exactly one field broken (`broken_pulses`), so
a test knows which field the rejection must name, and no example can be valid by
accident.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from ingestor.pulses.schema import MAX_AMOUNT

REQUIRED = ("tenant", "product_sku", "use_unity", "used_amount")
HUGE = "x" * 100_000

# Every exact amount a pulse may carry, as a producer may write it.
amounts = st.decimals(min_value=0, max_value=MAX_AMOUNT, places=6, allow_nan=False, allow_infinity=False)
amount_forms = amounts.flatmap(
    lambda amount: st.sampled_from(
        [format(amount, "f"), amount] + ([int(amount)] if amount == amount.to_integral_value() else [])
    )
)


def printable(max_size: int) -> st.SearchStrategy[str]:
    """1..max_size printable characters (what the schema accepts for names)."""
    return st.text(st.characters(codec="utf-8").filter(str.isprintable), min_size=1, max_size=max_size)


def past_timestamps(max_hours: int = 24 * 30) -> st.SearchStrategy[datetime]:
    """Aware timestamps between now and `max_hours` ago (inside the late limit)."""
    return st.integers(60, max_hours * 3600).map(
        lambda seconds: datetime.now(UTC) - timedelta(seconds=seconds)
    )


valid_pulses = st.fixed_dictionaries(
    {
        "tenant": printable(128),
        "product_sku": printable(128),
        "use_unity": printable(32),
        "used_amount": amount_forms,
    },
    optional={"id": printable(128), "timestamp": past_timestamps().map(datetime.isoformat)},
)

control_characters = st.characters(categories=["Cc"])
# Values no string field accepts: wrong types, empty, too long, control characters.
bad_strings = st.one_of(
    st.none(),
    st.integers(),
    st.booleans(),
    st.lists(st.text(max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just(""),
    st.just(HUGE),
    st.tuples(st.text(max_size=5), control_characters, st.text(max_size=5)).map("".join),
)
bad_amounts = st.one_of(
    st.none(),
    st.booleans(),
    st.just([1]),
    st.just({"$": 1}),
    st.just(HUGE),
    st.decimals(max_value=Decimal("-0.000001"), allow_nan=False, places=6).map(str),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", " 1", "1_000", "+1", "0x10", "", "1.0000001"]),
    st.sampled_from(
        [Decimal("NaN"), Decimal("Infinity"), Decimal("1.0000001"), MAX_AMOUNT + Decimal("0.000001")]
    ),
)
# (No floats: a float that reaches the API as a JSON number is read as a valid decimal.)
bad_timestamps = st.one_of(
    st.just("2026-01-01T10:00:00"),  # naive
    st.just("yesterday"),
    st.integers(),
    st.just(HUGE),
    st.just((datetime.now(UTC) - timedelta(days=40)).isoformat()),  # past the late limit
    st.just((datetime.now(UTC) + timedelta(hours=1)).isoformat()),  # in the future
)
BAD_VALUES = {
    "tenant": bad_strings,
    "product_sku": bad_strings,
    "use_unity": bad_strings,
    "id": bad_strings,
    "used_amount": bad_amounts,
    "timestamp": bad_timestamps,
}


@st.composite
def broken_pulses(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A valid pulse with one field broken (or a required one missing), and that field."""
    pulse = dict(draw(valid_pulses))
    field = draw(st.sampled_from(sorted(BAD_VALUES)))
    if field in REQUIRED and draw(st.booleans()):
        pulse.pop(field)
    else:
        pulse[field] = draw(BAD_VALUES[field])
    return pulse, field


def nested(depth: int) -> str:
    """A JSON array nested `depth` deep: deeper than the decoder's recursion limit."""
    return "[" * depth + "]" * depth


# JSON documents that are not a pulse: scalars, arrays of non-objects, objects without
# the required fields. (An object holding them is a pulse: see broken_pulses.)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text())
not_pulses = st.one_of(
    json_scalars,
    st.dictionaries(st.text(max_size=10).filter(lambda key: key not in REQUIRED), json_scalars, max_size=4),
    st.lists(json_scalars, max_size=4),
)
# Request bodies that are not a JSON pulse or array of pulses at all.
junk_bodies = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([nested(100_000), '{"tenant": "unterminated', "\x00", "[1,]", "NaN"]),
    st.text(max_size=50).map(lambda text: json.dumps(text)),
).map(lambda body: body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass"))
