"""Message decoding that never turns an amount into a binary float, for pulses only.

Celery producers send JSON. Decoded with the standard settings, `12345678.123456`
would become a float before the schema sees it, and a float cannot hold every decimal
amount exactly. `loads_decimal` reads JSON numbers with a fraction as `Decimal`.

It is used for pulse payloads alone: the raw queue's consumer calls it on each body,
and the pulse tasks name `ExactJsonRequest` as their Celery request class. kombu's
`json` serializer stays as kombu ships it for everything else in the process: worker
events and control replies carry floats (timestamps, load averages, rusage), and
Flower, `celery inspect` and `celery events` do arithmetic on them and write them out
as JSON, which a `Decimal` breaks.

Why a request class: the JSON text of a number is gone once it is decoded to a float,
so exactness has to be decided when the body is decoded, and per task, because an
outside producer's `send_task` labels a pulse batch `application/json` like any other
message. Celery builds one request per task message with the task's `Request` class
(`Task.Request`, a documented extension point), before it hands the body to the pool.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from celery.worker.request import Request
from kombu.serialization import SerializerRegistry
from kombu.utils import json as kombu_json

JSON_CONTENT_TYPE = "application/json"

# NaN and Infinity too, so the schema can say "must be finite" rather than "is a float".
# One decoder for the process: json.loads with arguments builds a new one per call.
# kombu's object hook turns its tagged values ({"__type__": "decimal", ...}) back.
_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=Decimal, object_hook=kombu_json.object_hook)


def loads_decimal(data: bytes | str | bytearray | memoryview):
    """Decode a JSON message body with fractional numbers as `Decimal`."""
    if not isinstance(data, str):
        data = bytes(data).decode("utf-8")
    return _DECODER.decode(data)


# A registry of our own, not kombu's global one: kombu's content checks, charset
# handling and DecodeError wrapping, with the exact decoder, for pulse messages only.
_EXACT = SerializerRegistry()
_EXACT.register("json", kombu_json.dumps, loads_decimal, content_type=JSON_CONTENT_TYPE, content_encoding="utf-8")


class ExactJsonRequest(Request):
    """Celery's task request, with a JSON body decoded by `loads_decimal`.

    The body is decoded here, in the worker's main process, and handed to the pool
    already decoded (`decoded=True`: the pool child then uses the args as given
    instead of decoding the body again with kombu's float decoder). A body kombu
    cannot decode never gets here: Celery's strategy has already read it and sent it
    to the consumer's decode-error path (the dead-letter queue). Anything but JSON
    (the worker accepts nothing else today) keeps Celery's own handling.
    """

    def __init__(self, message: Any, *args: Any, body: Any = None, decoded: bool = False, **kwargs: Any) -> None:
        if not decoded and message.content_type == JSON_CONTENT_TYPE:
            body = _EXACT.loads(
                message.body, message.content_type, message.content_encoding, accept=message.accept
            )
            decoded = True
        super().__init__(message, *args, body=body, decoded=decoded, **kwargs)
