"""Message decoding that never turns an amount into a binary float.

Celery producers send JSON. Decoded with the standard settings, `12345678.123456`
would become a float before the schema sees it, and a float cannot hold every decimal
amount exactly. This decoder reads JSON numbers with a fraction as `Decimal`.
"""

from __future__ import annotations

import json
from decimal import Decimal

from kombu.serialization import registry
from kombu.utils import json as kombu_json

# NaN and Infinity too, so the schema can say "must be finite" rather than "is a float".
# One decoder for the process: json.loads with arguments builds a new one per call.
# kombu's object hook turns its tagged values ({"__type__": "decimal", ...}) back.
_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=Decimal, object_hook=kombu_json.object_hook)


def loads_decimal(data: bytes | str | bytearray | memoryview):
    """Decode a JSON message body with fractional numbers as `Decimal`."""
    if not isinstance(data, str):
        data = bytes(data).decode("utf-8")
    return _DECODER.decode(data)


def register_decimal_json() -> None:
    """Make `application/json` messages decode with `loads_decimal`, process-wide.

    Encoding is unchanged: kombu's encoder writes a Decimal as a tagged object that
    its decoder (kept here) turns back into a Decimal.
    """
    registry.register(
        "json",
        kombu_json.dumps,
        loads_decimal,
        content_type="application/json",
        content_encoding="utf-8",
    )
