"""Unit tests of the tests' pulse builder: what it builds is what the scenario says."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from ingestor.pulses.schema import PulseSchema
from tests.support.pulses import DEFAULTS, MISSING, pulse


def test_the_defaults_are_a_valid_pulse() -> None:
    schema = PulseSchema(late_limit=timedelta(days=35), future_limit=timedelta(minutes=5))
    assert pulse() == DEFAULTS
    assert schema.load(pulse())["tenant"] == "acme"
    assert pulse() is not pulse() and pulse() is not DEFAULTS


def test_overrides_win_add_fields_and_missing_leaves_a_field_out() -> None:
    built = pulse(tenant="globex", id="p-1", used_amount=None, extra=1, product_sku=MISSING)
    assert built == {
        "tenant": "globex",
        "use_unity": "vCPU-hour",
        "used_amount": None,
        "id": "p-1",
        "extra": 1,
    }


def test_a_datetime_is_written_in_iso_8601_with_its_offset_and_a_string_as_given() -> None:
    moment = datetime(2026, 11, 27, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    assert pulse(timestamp=moment)["timestamp"] == "2026-11-27T10:00:00+02:00"
    assert pulse(timestamp="yesterday")["timestamp"] == "yesterday"
