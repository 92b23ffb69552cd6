"""Property tests of the boundary: every valid pulse loads exactly, every broken one is
rejected naming its field, and no input at all makes a decoder raise anything but its
own clear error.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from ingestor.api.parsing import BodyError, decode_json
from ingestor.pulses.raw_consumer import UndecodableBody, decode_body
from ingestor.pulses.schema import PulseSchema, from_micro_units, to_micro_units
from tests.support.strategies import amount_forms, broken_pulses, junk_bodies, not_pulses, valid_pulses

pytestmark = pytest.mark.property

SCHEMA = PulseSchema(late_limit=timedelta(days=35), future_limit=timedelta(minutes=5))


@given(valid_pulses)
def test_every_valid_pulse_loads_with_its_exact_amount(pulse: dict) -> None:
    loaded = SCHEMA.load(pulse)
    assert loaded["used_amount"] == Decimal(pulse["used_amount"])
    assert from_micro_units(to_micro_units(loaded["used_amount"])) == loaded["used_amount"]


@given(st.lists(amount_forms, max_size=50))
def test_micro_units_sum_exactly(amounts: list) -> None:
    micro = sum(to_micro_units(Decimal(amount)) for amount in amounts)
    assert from_micro_units(micro) == sum((Decimal(amount) for amount in amounts), Decimal(0))


@given(broken_pulses())
def test_every_broken_pulse_is_rejected_naming_its_field(case: tuple[dict, str]) -> None:
    pulse, field = case
    with pytest.raises(ValidationError) as rejected:
        SCHEMA.load(pulse)
    assert field in rejected.value.normalized_messages()


@given(not_pulses)
def test_anything_that_is_not_a_pulse_is_a_validation_error(value: object) -> None:
    with pytest.raises(ValidationError):
        SCHEMA.load(value)


@settings(max_examples=200)
@given(junk_bodies)
def test_junk_bodies_decode_or_fail_clearly(body: bytes) -> None:
    # The API's decoder and the raw queue's: a value, or their own error; never a crash.
    try:
        decode_json(body)
    except BodyError:
        pass
    try:
        assert isinstance(decode_body(body, max_bytes=1 << 20), list)
    except UndecodableBody:
        pass
