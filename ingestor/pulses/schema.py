"""The pulse: its marshmallow schema, the boundary every pulse crosses once.

A pulse says "tenant T used A units U of product SKU S at time W". The schema
validates one pulse as the design's table describes and loads it into a plain dict
with `used_amount` as an exact `Decimal`. Field names are the first version's, so
existing producers keep working; unknown fields are ignored.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Any

import humanize
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validates

# Amounts are summed in Redis as signed 64-bit integers of micro-units, so one pulse
# can carry at most 2**63 - 1 micro-units; larger sums spill safely (see aggregation).
MAX_FRACTION_DIGITS = 6
MAX_AMOUNT = Decimal(2**63 - 1).scaleb(-MAX_FRACTION_DIGITS)

# A decimal string as producers write it: digits, an optional fraction, an optional
# exponent. Stricter than Decimal(), which also takes "NaN", " 1", "1_000" and "+1".
_ABSENT = object()

DECIMAL_STRING = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?\Z")


class PrintableString(fields.String):
    """A string of 1..`max_length` printable characters (no control characters)."""

    def __init__(self, max_length: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_length = max_length

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if not 1 <= len(text) <= self.max_length:
            raise ValidationError(f"Must be 1 to {self.max_length} characters long, got {len(text)}.")
        if not text.isprintable():
            raise ValidationError("Must hold printable characters only (no control characters).")
        return text


class Amount(fields.Field):
    """A non-negative amount with at most six fractional digits, as an exact Decimal.

    Accepts a JSON number (decoded as Decimal, never as a float: see
    `ingestor.messaging.serialization`), an integer, or a decimal string.
    """

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, (int, Decimal, str)):
            raise ValidationError("Must be a number or a decimal string.")
        if isinstance(value, str):
            if len(value) > 64 or not DECIMAL_STRING.match(value):
                raise ValidationError("Not a valid decimal number.")
        try:
            amount = Decimal(value)
        except InvalidOperation:
            raise ValidationError("Not a valid decimal number.") from None
        if not amount.is_finite():
            raise ValidationError("Must be a finite number.")
        if amount < 0:
            raise ValidationError("Must not be negative.")
        exponent = amount.as_tuple().exponent
        assert isinstance(exponent, int)  # finite, checked above
        if exponent < -MAX_FRACTION_DIGITS:
            raise ValidationError(f"Must have at most {MAX_FRACTION_DIGITS} fractional digits.")
        if amount > MAX_AMOUNT:
            raise ValidationError(f"Must be at most {MAX_AMOUNT}.")
        return amount

    def _serialize(self, value: Decimal | None, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        # A decimal string: exact for any consumer, whatever its JSON number parsing.
        return None if value is None else format(value, "f")


class PulseSchema(Schema):
    """Validates one pulse; `load` returns a dict or raises with reasons per field."""

    class Meta:
        unknown = EXCLUDE

    id = PrintableString(128, metadata={"description": "Idempotency key: (tenant, id) counts once"})
    tenant = PrintableString(128, required=True)
    product_sku = PrintableString(128, required=True)
    use_unity = PrintableString(32, required=True, metadata={"example": "GB"})
    used_amount = Amount(
        required=True,
        metadata={
            "description": "Number or decimal string; >= 0, at most 6 fractional digits",
            "example": "12.5",
        },
    )
    timestamp = fields.AwareDateTime(
        format="iso", metadata={"description": "ISO-8601 with offset; default: when the pulse was received"}
    )

    def __init__(self, *, late_limit: timedelta, future_limit: timedelta, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.late_limit = late_limit
        self.future_limit = future_limit

    @validates("timestamp")
    def _timestamp_in_accepted_range(self, value: datetime, **_: Any) -> None:
        now = datetime.now(UTC)
        if value < now - self.late_limit:
            raise ValidationError(
                f"Is older than the late limit of {_duration(self.late_limit)}: that hour is closed."
            )
        if value > now + self.future_limit:
            raise ValidationError(f"Is more than {_duration(self.future_limit)} in the future.")

    def load_pulse(self, data: Any) -> dict[str, Any]:
        """`load` one pulse: the same result and the same errors, about 3 times faster.

        Profiling a worker showed marshmallow's per-field machinery (wrappers, error
        store, hooks lookup) taking most of its time, not the checks themselves. For a
        plain dict, this calls each field's own deserializer and the timestamp validator
        directly; anything unusual (a missing or null field, any invalid value) goes
        through the full `load`, which raises with every reason. It relies on this
        schema having no hooks, no `validate=` arguments and no `data_key`s (the checks
        live in the fields' `_deserialize`); tests/unit/test_schema_fast_path.py checks
        that both give the same answer on arbitrary input.
        """
        if type(data) is not dict:
            return self.load(data)
        loaded: dict[str, Any] = {}
        try:
            for name, field, required in self._plain_fields:
                value = data.get(name, _ABSENT)
                if value is _ABSENT:
                    if required:
                        return self.load(data)
                    continue
                if value is None:
                    return self.load(data)
                loaded[name] = field._deserialize(value, name, data)
            if "timestamp" in loaded:
                self._timestamp_in_accepted_range(loaded["timestamp"])
        except ValidationError:
            return self.load(data)
        return loaded

    @cached_property
    def _plain_fields(self) -> list[tuple[str, fields.Field, bool]]:
        return [(name, field, field.required) for name, field in self.load_fields.items()]


def _duration(delta: timedelta) -> str:
    """`35 days`, `5 minutes`: a limit as a producer reads it (str() gives `35 days, 0:00:00`)."""
    return humanize.precisedelta(delta, suppress=["months", "years"])


# Why a pulse was rejected, as a short code from a fixed set (a metric's label values):
# the start of each message the schema (and marshmallow under it) can give.
_REASON_CODES = (
    ("Missing data for required field", "missing"),
    ("Field may not be null", "null"),
    ("Invalid input type", "type"),
    ("Not a valid string", "type"),
    ("Not a valid utf-8 string", "type"),
    ("Must be a number or a decimal string", "type"),
    ("Must be 1 to ", "length"),
    ("Must hold printable characters only", "not_printable"),
    ("Not a valid decimal number", "not_a_number"),
    ("Must be a finite number", "not_finite"),
    ("Must not be negative", "negative"),
    ("Must have at most", "fraction_digits"),
    ("Must be at most", "too_large"),
    ("Not a valid datetime", "not_a_datetime"),
    ("Not a valid aware datetime", "no_offset"),
    ("Is older than the late limit", "too_old"),
    ("Is more than", "future"),
)


def reason_code(message: str) -> str:
    """The code of one validation message (`invalid` for any other)."""
    for prefix, code in _REASON_CODES:
        if message.startswith(prefix):
            return code
    return "invalid"


# Every code `reason_code` can give, `invalid` last (the one no prefix gives).
REASON_CODES = (*dict.fromkeys(code for _, code in _REASON_CODES), "invalid")


def reasons_per_field(errors: dict[str, Any]) -> dict[str, list[str]]:
    """{field: [reason codes]} of one rejected pulse's `errors` (marshmallow's messages),
    in the order of the messages, each code once per field."""
    reasons: dict[str, list[str]] = {}
    for field, messages in errors.items():
        codes = reasons.setdefault(field, [])
        for message in messages if isinstance(messages, list) else [messages]:
            code = reason_code(message) if isinstance(message, str) else "invalid"
            if code not in codes:
                codes.append(code)
    return reasons


def rejection_codes(errors: dict[str, Any]) -> list[str]:
    """The reason codes of one rejected pulse, whatever their field, sorted, each once."""
    return sorted({code for codes in reasons_per_field(errors).values() for code in codes})


def rejection_reasons(errors: dict[str, Any]) -> set[tuple[str, str]]:
    """(field, reason code) of one rejected pulse's `errors` (marshmallow's messages)."""
    return {(field, code) for field, codes in reasons_per_field(errors).items() for code in codes}


def to_micro_units(amount: Decimal) -> int:
    """Exact integer micro-units of a validated amount (at most 6 fractional digits)."""
    # A validated amount has at most 19 significant digits, well inside the default
    # context's 28, so scaleb cannot round.
    return int(amount.scaleb(MAX_FRACTION_DIGITS))


def from_micro_units(micro_units: int) -> Decimal:
    """The exact Decimal amount of `micro_units`, with six fractional digits."""
    # Built from a string: Decimal arithmetic would round sums past 28 digits.
    return Decimal(f"{micro_units}E-{MAX_FRACTION_DIGITS}")
