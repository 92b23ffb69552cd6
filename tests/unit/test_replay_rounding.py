"""Unit tests of the rounding `flask pulses replay-rejected --round-half-even` applies."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ingestor.pulses.replay_rejected import round_half_even


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        ("0.30000000000000004", "0.300000"),
        ("0.0000015", "0.000002"),  # half to even: up to 2
        ("0.0000025", "0.000002"),  # half to even: down to 2
        ("5E-7", "0.000000"),
        (Decimal("1.5e-07"), "0.000000"),
        ("9223372036854.7758069", "9223372036854.775807"),
    ],
)
def test_too_precise_amounts_are_rounded_half_to_even(amount, expected) -> None:
    pulse = {"used_amount": amount}
    assert round_half_even(pulse) is True
    assert pulse["used_amount"] == expected


@pytest.mark.parametrize(
    "amount",
    [
        "1.5",
        3,
        "0.000001",
        "-0.0000001",
        "1e400",
        "NaN",
        "abc",
        "1_000.0000001",
        " 0.0000001",
        True,
        None,
        1.5,
    ],
)
def test_anything_else_is_left_for_the_schema(amount) -> None:
    pulse = {"used_amount": amount}
    assert round_half_even(pulse) is False
    assert pulse["used_amount"] is amount


def test_a_payload_that_is_not_a_pulse_is_left_alone() -> None:
    assert round_half_even(["not", "a", "pulse"]) is False
