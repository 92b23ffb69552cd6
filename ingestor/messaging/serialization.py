"""Message decoding that never turns an amount into a binary float.

Celery producers send JSON. Decoded with the standard settings, `12345678.123456`
would become a float before the schema sees it, and a float cannot hold every decimal
amount exactly. This decoder reads JSON numbers with a fraction as `Decimal`.
"""

from __future__ import annotations

import json
from decimal import Decimal
from functools import partial

from kombu.serialization import registry
from kombu.utils import json as kombu_json

# NaN and Infinity too, so the schema can say "must be finite" rather than "is a float".
_decimal_json_loads = partial(json.loads, parse_float=Decimal, parse_constant=Decimal)


def loads_decimal(data: bytes | str | bytearray | memoryview):
    """Decode a JSON message body with fractional numbers as `Decimal`."""
    return kombu_json.loads(data, _loads=_decimal_json_loads)


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
