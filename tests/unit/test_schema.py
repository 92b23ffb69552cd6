"""Unit tests of the pulse schema: the field rules of DESIGN.md's "The pulse" table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from marshmallow import ValidationError

from ingestor.pulses.schema import (
    MAX_AMOUNT,
    Amount,
    PrintableString,
    PulseSchema,
    from_micro_units,
    to_micro_units,
)
from tests.support.pulses import MISSING, pulse


@pytest.fixture
def schema() -> PulseSchema:
    return PulseSchema(late_limit=timedelta(days=35), future_limit=timedelta(minutes=5))


def iso(delta: timedelta, offset: timedelta = timedelta(0), z: bool = False) -> str:
    """A timestamp `delta` from now (negative: in the past), written with an offset or 'Z'."""
    moment = (datetime.now(UTC) + delta).replace(microsecond=0)
    if z:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return moment.astimezone(timezone(offset)).isoformat()


def errors_of(schema: PulseSchema, data: object) -> dict:
    with pytest.raises(ValidationError) as excinfo:
        schema.load(data)
    return excinfo.value.messages  # type: ignore[return-value]


# --- valid amounts ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (0, Decimal(0)),
        (1, Decimal(1)),
        (42, Decimal(42)),
        (9223372036854, Decimal(9223372036854)),
        (Decimal("0"), Decimal("0")),
        (Decimal("1.5"), Decimal("1.5")),
        (Decimal("0.000001"), Decimal("0.000001")),
        ("0", Decimal("0")),
        ("0.000001", Decimal("0.000001")),
        ("1.5", Decimal("1.5")),
        ("12345678.123456", Decimal("12345678.123456")),
        ("1E+3", Decimal("1000")),
        ("1e3", Decimal("1000")),
        ("1.5E-5", Decimal("0.000015")),
        ("9223372036854.775807", Decimal("9223372036854.775807")),
        (Decimal("9223372036854.775807"), Decimal("9223372036854.775807")),
    ],
)
def test_valid_amounts_load_as_exact_decimals(schema: PulseSchema, raw: object, expected: Decimal) -> None:
    result = schema.load(pulse(used_amount=raw))
    amount = result["used_amount"]
    assert isinstance(amount, Decimal)
    assert amount == expected
    # Exact: no binary float ever in between, so the micro-units are exact too.
    assert to_micro_units(amount) == int(expected * 1_000_000)


def test_max_amount_is_two_to_the_63_minus_one_micro_units() -> None:
    assert MAX_AMOUNT == Decimal("9223372036854.775807")
    assert to_micro_units(MAX_AMOUNT) == 2**63 - 1


# --- valid pulses -----------------------------------------------------------------


def test_minimal_pulse_loads_without_id_or_timestamp(schema: PulseSchema) -> None:
    assert schema.load(pulse()) == {
        "tenant": "acme",
        "product_sku": "vm.small",
        "use_unity": "vCPU-hour",
        "used_amount": Decimal("1"),
    }


def test_id_is_kept_when_given(schema: PulseSchema) -> None:
    result = schema.load(pulse(id="order-42/line:7"))
    assert result["id"] == "order-42/line:7"


@pytest.mark.parametrize(
    "tenant",
    ["a:b", "tenant:with:colons", "Ünïcødé-テナント", "a|b", '["x"]', "😀", "a b", "x" * 128],
)
def test_tenant_with_unicode_colons_and_max_length_is_accepted(schema: PulseSchema, tenant: str) -> None:
    assert schema.load(pulse(tenant=tenant))["tenant"] == tenant


def test_use_unity_of_32_chars_is_accepted(schema: PulseSchema) -> None:
    assert schema.load(pulse(use_unity="u" * 32))["use_unity"] == "u" * 32


def test_unknown_fields_are_ignored_and_absent(schema: PulseSchema) -> None:
    result = schema.load(pulse(extra="x", region="eu-west", nested={"a": 1}))
    assert set(result) == {"tenant", "product_sku", "use_unity", "used_amount"}


@pytest.mark.parametrize(
    ("text", "expected_utc_offset"),
    [
        (iso(-timedelta(hours=1), z=True), timedelta(0)),
        (iso(-timedelta(hours=1), offset=timedelta(hours=2)), timedelta(hours=2)),
        (iso(-timedelta(hours=1), offset=timedelta(hours=-5, minutes=-30)), timedelta(hours=-5, minutes=-30)),
        (iso(-timedelta(days=34)), timedelta(0)),
        (iso(timedelta(minutes=4)), timedelta(0)),
    ],
)
def test_aware_timestamps_in_range_are_accepted(
    schema: PulseSchema, text: str, expected_utc_offset: timedelta
) -> None:
    result = schema.load(pulse(timestamp=text))
    stamp = result["timestamp"]
    assert isinstance(stamp, datetime)
    assert stamp.utcoffset() == expected_utc_offset
    # The same instant as the text says, whatever its offset.
    expected = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert stamp == expected


def test_z_and_offset_forms_of_one_instant_load_equal(schema: PulseSchema) -> None:
    moment = (datetime.now(UTC) - timedelta(hours=3)).replace(microsecond=0)
    as_z = schema.load(pulse(timestamp=moment.strftime("%Y-%m-%dT%H:%M:%SZ")))["timestamp"]
    as_plus2 = schema.load(pulse(timestamp=moment.astimezone(timezone(timedelta(hours=2))).isoformat()))[
        "timestamp"
    ]
    assert as_z == as_plus2 == moment


# --- invalid amounts --------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        -1,
        Decimal("-0.000001"),
        "-1",
        "-0.5",
        Decimal("NaN"),
        Decimal("sNaN"),
        Decimal("Infinity"),
        Decimal("-Infinity"),
        "NaN",
        "nan",
        "Infinity",
        "-Infinity",
        "inf",
        "0.0000001",
        "1.1234567",
        "1.5000000",
        Decimal("1.5000000"),
        Decimal("0.0000001"),
        "1E-7",
        "9223372036854.775808",
        Decimal("9223372036854.775808"),
        9223372036855,
        "1E+13",
        10**40,
        True,
        False,
        1.5,
        0.0,
        None,
        [],
        [1],
        {},
        {"value": 1},
        " 1",
        "1 ",
        "1_000",
        "+1",
        "abc",
        "",
        "0x10",
        "1,5",
        "1" * 65,
    ],
)
def test_invalid_amounts_are_rejected_under_used_amount(schema: PulseSchema, raw: object) -> None:
    errors = errors_of(schema, pulse(used_amount=raw))
    assert list(errors) == ["used_amount"]
    assert errors["used_amount"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (-1, "Must not be negative."),
        (Decimal("NaN"), "Must be a finite number."),
        (Decimal("Infinity"), "Must be a finite number."),
        ("NaN", "Not a valid decimal number."),
        ("Infinity", "Not a valid decimal number."),
        ("1.5000000", "Must have at most 6 fractional digits."),
        ("9223372036854.775808", "Must be at most 9223372036854.775807."),
        (True, "Must be a number or a decimal string."),
        (1.5, "Must be a number or a decimal string."),
        (None, "Field may not be null."),
        ("1_000", "Not a valid decimal number."),
    ],
)
def test_amount_rejection_reasons(schema: PulseSchema, raw: object, message: str) -> None:
    assert errors_of(schema, pulse(used_amount=raw)) == {"used_amount": [message]}


def test_amount_field_alone_rejects_a_float() -> None:
    with pytest.raises(ValidationError):
        Amount().deserialize(0.1)


# --- invalid strings --------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tenant", ""),
        ("tenant", "x" * 129),
        ("tenant", "a\x00b"),
        ("tenant", "a\nb"),
        ("tenant", "\t"),
        ("tenant", "a\x7fb"),
        ("tenant", 42),
        ("tenant", None),
        ("product_sku", ""),
        ("product_sku", "s" * 129),
        ("product_sku", "sku\r"),
        ("use_unity", ""),
        ("use_unity", "u" * 33),
        ("use_unity", "GB\x00"),
        ("id", ""),
        ("id", "i" * 129),
        ("id", "id\n"),
    ],
)
def test_invalid_strings_are_rejected_under_their_field(
    schema: PulseSchema, field: str, value: object
) -> None:
    errors = errors_of(schema, pulse(**{field: value}))
    assert list(errors) == [field]


def test_printable_string_reports_length() -> None:
    with pytest.raises(ValidationError) as excinfo:
        PrintableString(32).deserialize("u" * 33)
    assert excinfo.value.messages == ["Must be 1 to 32 characters long, got 33."]


def test_printable_string_rejects_control_characters() -> None:
    with pytest.raises(ValidationError) as excinfo:
        PrintableString(128).deserialize("a\x00b")
    assert excinfo.value.messages == ["Must hold printable characters only (no control characters)."]


@pytest.mark.parametrize("field", ["tenant", "product_sku", "use_unity", "used_amount"])
def test_each_required_field_missing_is_reported(schema: PulseSchema, field: str) -> None:
    assert errors_of(schema, pulse(**{field: MISSING})) == {field: ["Missing data for required field."]}


def test_all_missing_fields_are_reported_at_once(schema: PulseSchema) -> None:
    errors = errors_of(schema, {})
    assert set(errors) == {"tenant", "product_sku", "use_unity", "used_amount"}


def test_errors_of_several_fields_are_reported_together(schema: PulseSchema) -> None:
    errors = errors_of(schema, pulse(tenant="", used_amount="-1", use_unity="u" * 33))
    assert set(errors) == {"tenant", "used_amount", "use_unity"}


# --- invalid timestamps -----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        (datetime.now(UTC) - timedelta(hours=1)).replace(tzinfo=None).isoformat(),  # naive
        "2026-01-01T00:00:00",  # naive
        "yesterday",
        "01/02/2026 10:00",
        "",
        iso(-timedelta(days=36)),
        iso(-timedelta(days=36), z=True),
        # An hour ahead, not minutes: these are computed when the tests are collected,
        # and the integration tests run first, for minutes.
        iso(timedelta(hours=1)),
        iso(timedelta(hours=1), offset=timedelta(hours=2)),
        "1999-12-31T23:59:59+00:00",
    ],
)
def test_invalid_timestamps_are_rejected_under_timestamp(schema: PulseSchema, text: str) -> None:
    errors = errors_of(schema, pulse(timestamp=text))
    assert list(errors) == ["timestamp"]


def test_late_timestamp_reason_names_the_late_limit(schema: PulseSchema) -> None:
    errors = errors_of(schema, pulse(timestamp=iso(-timedelta(days=36))))
    assert errors["timestamp"] == ["Is older than the late limit of 35 days: that hour is closed."]


def test_future_timestamp_reason_names_the_future_limit(schema: PulseSchema) -> None:
    errors = errors_of(schema, pulse(timestamp=iso(timedelta(minutes=10))))
    assert errors["timestamp"] == ["Is more than 5 minutes in the future."]


def test_naive_timestamp_reason(schema: PulseSchema) -> None:
    errors = errors_of(schema, pulse(timestamp="2026-01-01T00:00:00"))
    assert errors == {"timestamp": ["Not a valid aware datetime."]}


# --- not a pulse at all ----------------------------------------------------------


@pytest.mark.parametrize("data", ["a pulse", [pulse()], None, 42, b"{}"])
def test_non_dict_pulse_is_rejected_under_schema(schema: PulseSchema, data: object) -> None:
    assert errors_of(schema, data) == {"_schema": ["Invalid input type."]}


# --- micro-units ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "micro"),
    [
        (Decimal("0"), 0),
        (Decimal("0.000001"), 1),
        (Decimal("1"), 1_000_000),
        (Decimal("1.5"), 1_500_000),
        (Decimal("1E+3"), 1_000_000_000),
        (Decimal("12345678.123456"), 12_345_678_123_456),
        (Decimal("9223372036854.775807"), 2**63 - 1),
    ],
)
def test_to_micro_units_is_exact_and_round_trips(amount: Decimal, micro: int) -> None:
    assert to_micro_units(amount) == micro
    assert isinstance(to_micro_units(amount), int)
    back = from_micro_units(micro)
    assert back == amount
    assert back.as_tuple().exponent == -6


@pytest.mark.parametrize(
    ("micro", "text"),
    [
        (0, "0.000000"),
        (1, "0.000001"),
        (1_500_000, "1.500000"),
        (2**63 - 1, "9223372036854.775807"),
        (2**64 + 1, "18446744073709.551617"),
        (10**40 + 1, "10000000000000000000000000000000000.000001"),
        (3 * (2**63 - 1), "27670116110564.327421"),
        (10**37 + 123456, "10000000000000000000000000000000.123456"),
    ],
)
def test_from_micro_units_is_exact_past_28_digits(micro: int, text: str) -> None:
    result = from_micro_units(micro)
    assert result == Decimal(text)
    assert str(result) == text
    # every digit kept, scaled by exactly 10**-6: no rounding at any length
    sign, digits, exponent = result.as_tuple()
    assert (sign, exponent) == (0, -6)
    assert int("".join(map(str, digits))) == micro


def test_from_micro_units_of_ten_to_the_forty_plus_one() -> None:
    assert from_micro_units(10**40 + 1) == Decimal("10000000000000000000000000000000000.000001")


@pytest.mark.parametrize("raw", ["0", "0.000001", "12345678.123456", "1E+3", "9223372036854.775807", 7])
def test_schema_output_round_trips_through_micro_units(schema: PulseSchema, raw: object) -> None:
    amount = schema.load(pulse(used_amount=raw))["used_amount"]
    assert from_micro_units(to_micro_units(amount)) == amount
    assert from_micro_units(to_micro_units(amount)) == Decimal(str(raw))
