"""`PulseSchema.load_pulse` (the workers' fast path) answers exactly as `load` does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from ingestor.pulses.schema import PulseSchema

SCHEMA = PulseSchema(late_limit=timedelta(days=35), future_limit=timedelta(minutes=5))
NOW = datetime.now(UTC)

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.text(max_size=140),
)
strings = st.one_of(
    st.text(min_size=1, max_size=40), st.text(max_size=200), st.just(""), st.just("a\x00b"), junk
)
amounts = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True, places=None),
    st.decimals(min_value=0, max_value=10**14, places=6),
    st.integers(min_value=-5, max_value=2**64),
    st.from_regex(r"-?[0-9]{1,20}(\.[0-9]{1,8})?([eE][-+]?[0-9]{1,3})?", fullmatch=True),
    st.sampled_from(["1.5", " 1", "1_000", "+1", "NaN", "1e-7", "0.000001", "9223372036854.775808"]),
    junk,
)
timestamps = st.one_of(
    st.sampled_from([timedelta(days=-40), timedelta(days=-1), timedelta(0), timedelta(hours=1)]).map(
        lambda delta: (NOW + delta).isoformat()
    ),
    st.sampled_from(["2026-11-27T10:00:00", "yesterday", "2026-13-01T00:00:00Z", "", "2026-11-27"]),
    junk,
)
FIELD_STRATEGIES = {
    "id": strings,
    "tenant": strings,
    "product_sku": strings,
    "use_unity": strings,
    "used_amount": amounts,
    "timestamp": timestamps,
}
pulses = st.fixed_dictionaries({}, optional={**FIELD_STRATEGIES, "extra": junk})

VALID = {
    "id": "p-1",
    "tenant": "acme:eu",
    "product_sku": "vm.small",
    "use_unity": "vCPU-hour",
    "used_amount": "1.5",
    "timestamp": NOW.isoformat(),
}


@st.composite
def near_valid(draw):
    """A valid pulse with one field replaced by anything, or removed: where bugs hide."""
    pulse = dict(VALID)
    name = draw(st.sampled_from(sorted(FIELD_STRATEGIES)))
    if draw(st.booleans()):
        pulse[name] = draw(FIELD_STRATEGIES[name])
    else:
        del pulse[name]
    return pulse


def outcome(load, data):
    try:
        return "loaded", load(data)
    except ValidationError as exc:
        return "rejected", exc.normalized_messages()


@settings(max_examples=1500, deadline=None)
@given(st.one_of(near_valid(), pulses, junk))
def test_fast_path_and_full_load_agree(data):
    assert outcome(SCHEMA.load_pulse, data) == outcome(SCHEMA.load, data)


def test_fast_path_loads_a_typical_pulse():
    pulse = {
        "id": "p",
        "tenant": "t",
        "product_sku": "s",
        "use_unity": "u",
        "used_amount": "1.5",
        "timestamp": NOW.isoformat(),
        "ignored": 1,
    }
    assert SCHEMA.load_pulse(pulse) == {
        "id": "p",
        "tenant": "t",
        "product_sku": "s",
        "use_unity": "u",
        "used_amount": Decimal("1.5"),
        "timestamp": NOW,
    }
