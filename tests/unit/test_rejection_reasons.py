"""Unit tests of the reason codes rejected pulses are counted by (a metric's label values)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from ingestor.observability.metrics import rejected_fields
from ingestor.pulses.ingest import PulseValidator
from ingestor.pulses.schema import (
    REASON_CODES,
    reasons_per_field,
    rejection_codes,
    rejection_reasons,
)
from ingestor.settings import Settings

VALID = {"tenant": "t", "product_sku": "s", "use_unity": "u", "used_amount": "1"}
NOW = datetime.now(UTC)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"used_amount": Decimal("5E-7")}, ("used_amount", "fraction_digits")),
        ({"used_amount": Decimal("0.30000000000000004")}, ("used_amount", "fraction_digits")),
        ({"used_amount": Decimal("1E+21")}, ("used_amount", "too_large")),
        ({"used_amount": "-1"}, ("used_amount", "negative")),
        ({"used_amount": "x"}, ("used_amount", "not_a_number")),
        ({"used_amount": Decimal("NaN")}, ("used_amount", "not_finite")),
        ({"used_amount": 1.5}, ("used_amount", "type")),
        ({"used_amount": None}, ("used_amount", "null")),
        ({"tenant": ""}, ("tenant", "length")),
        ({"tenant": "a\x00b"}, ("tenant", "not_printable")),
        ({"tenant": 7}, ("tenant", "type")),
        ({"timestamp": "yesterday"}, ("timestamp", "not_a_datetime")),
        ({"timestamp": "2026-01-01T00:00:00"}, ("timestamp", "no_offset")),
        ({"timestamp": (NOW - timedelta(days=400)).isoformat()}, ("timestamp", "too_old")),
        ({"timestamp": (NOW + timedelta(hours=1)).isoformat()}, ("timestamp", "future")),
    ],
)
def test_every_reason_the_schema_gives_has_a_code_of_its_own(change: dict, expected: tuple[str, str]) -> None:
    _, (rejection,) = PulseValidator(Settings()).check([{**VALID, **change}])
    assert rejection.reasons == {expected}


def test_missing_fields_and_non_objects_have_codes_too() -> None:
    _, rejections = PulseValidator(Settings()).check([{"tenant": "t"}, "not a pulse"])
    assert rejections[0].reasons == {
        ("product_sku", "missing"),
        ("use_unity", "missing"),
        ("used_amount", "missing"),
    }
    assert rejections[1].reasons == {("_schema", "type")}


def test_the_metric_counts_a_pulse_once_per_field_and_reason() -> None:
    tally = rejected_fields(
        [{("used_amount", "negative")}, {("used_amount", "negative"), ("_schema", "type")}]
    )
    assert tally == {("used_amount", "negative"): 2, ("pulse", "type"): 1}


def test_reasons_per_field_keep_the_messages_order_and_each_code_once() -> None:
    errors = {
        "used_amount": ["Must not be negative.", "Must be at most 1.", "Must not be negative again."],
        "tenant": "Missing data for required field.",  # not a list: one message
        "nested": {"0": ["Must not be negative."]},  # not a message at all
        "empty": [],
    }
    assert reasons_per_field(errors) == {
        "used_amount": ["negative", "too_large"],
        "tenant": ["missing"],
        "nested": ["invalid"],
        "empty": [],
    }
    assert rejection_reasons(errors) == {
        ("used_amount", "negative"),
        ("used_amount", "too_large"),
        ("tenant", "missing"),
        ("nested", "invalid"),
    }


def test_rejection_codes_are_every_fields_codes_sorted_once() -> None:
    errors = {
        "used_amount": ["Must not be negative."],
        "tenant": ["Missing data for required field."],
        "product_sku": ["Missing data for required field."],
        "odd": [{"nested": "x"}],
    }
    assert rejection_codes(errors) == ["invalid", "missing", "negative"]
    assert rejection_codes({}) == []
    assert REASON_CODES[-1] == "invalid" and len(set(REASON_CODES)) == len(REASON_CODES)
