"""Unit tests of the message decoder that reads fractional JSON numbers as Decimal."""

from __future__ import annotations

from decimal import Decimal

import pytest
from kombu.utils import json as kombu_json

from ingestor.messaging.serialization import loads_decimal

BODY = '[{"tenant": "acme", "used_amount": 12345678901234567.123456, "count": 3}]'


@pytest.mark.parametrize(
    "data",
    [BODY, BODY.encode(), bytearray(BODY.encode()), memoryview(BODY.encode())],
    ids=["str", "bytes", "bytearray", "memoryview"],
)
def test_every_body_type_decodes_the_same(data: object) -> None:
    decoded = loads_decimal(data)
    assert decoded == [{"tenant": "acme", "used_amount": Decimal("12345678901234567.123456"), "count": 3}]
    amount = decoded[0]["used_amount"]
    assert isinstance(amount, Decimal)
    assert str(amount) == "12345678901234567.123456"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.1", "0.1"),
        ("12345678.123456", "12345678.123456"),
        ("12345678901234567.123456", "12345678901234567.123456"),
        ("9223372036854.775807", "9223372036854.775807"),
        ("0.000001", "0.000001"),
        ("1.5000000", "1.5000000"),
        ("-2.5", "-2.5"),
        ("1e3", "1E+3"),
        ("1E-7", "1E-7"),
        ("123456789012345678901234567890.123456789", "123456789012345678901234567890.123456789"),
    ],
)
def test_fractional_numbers_become_exact_decimals(text: str, expected: str) -> None:
    value = loads_decimal(text)
    assert isinstance(value, Decimal)
    assert value == Decimal(expected)
    assert str(value) == expected  # same digits and exponent: never through a float


def test_point_one_is_not_the_float_point_one() -> None:
    value = loads_decimal("0.1")
    assert value != Decimal.from_float(0.1)
    assert value == Decimal("0.1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("7", 7), ("-3", -3), ("9223372036854775807", 2**63 - 1), (str(10**40), 10**40)],
)
def test_integers_stay_int(text: str, expected: int) -> None:
    value = loads_decimal(text)
    assert type(value) is int
    assert value == expected


def test_nan_becomes_decimal_nan() -> None:
    value = loads_decimal("NaN")
    assert isinstance(value, Decimal)
    assert value.is_nan()
    assert not value.is_snan()


@pytest.mark.parametrize(("text", "expected"), [("Infinity", "Infinity"), ("-Infinity", "-Infinity")])
def test_infinities_become_decimal_infinities(text: str, expected: str) -> None:
    value = loads_decimal(text)
    assert isinstance(value, Decimal)
    assert value == Decimal(expected)
    assert value.is_infinite()


def test_constants_inside_a_pulse_are_decimals() -> None:
    decoded = loads_decimal(b'{"a": NaN, "b": Infinity, "c": 1.25, "d": 2, "e": "3.5"}')
    assert decoded["a"].is_nan()
    assert decoded["b"] == Decimal("Infinity")
    assert decoded["c"] == Decimal("1.25")
    assert type(decoded["d"]) is int
    assert decoded["e"] == "3.5"


@pytest.mark.parametrize(
    "amount",
    [
        Decimal("12345678.123456"),
        Decimal("0.000001"),
        Decimal("9223372036854.775807"),
        Decimal("12345678901234567890123456789.123456"),
        Decimal("0"),
    ],
)
def test_kombu_encoded_decimal_round_trips(amount: Decimal) -> None:
    body = kombu_json.dumps([{"tenant": "acme", "used_amount": amount}])
    decoded = loads_decimal(body)
    assert decoded[0]["tenant"] == "acme"
    assert Decimal(decoded[0]["used_amount"]) == amount
    assert str(Decimal(decoded[0]["used_amount"])) == str(amount)


def test_kombu_encoded_decimal_bytes_round_trip() -> None:
    amount = Decimal("12345678901234567.123456")
    decoded = loads_decimal(kombu_json.dumps({"used_amount": amount}).encode())
    assert Decimal(decoded["used_amount"]) == amount
