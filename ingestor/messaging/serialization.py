"""Message decoding that never turns an amount into a binary float, for pulses only.

Celery producers send JSON. Decoded with the standard settings, `12345678.123456`
would become a float before the schema sees it, and a float cannot hold every decimal
amount exactly. `loads_decimal` reads JSON numbers with a fraction as `Decimal`.

Exactness is for pulse payloads alone: the pulse tasks name `ExactJsonRequest` as
their Celery request class (the raw queue's consumer reads its bodies exactly too,
never through kombu's serializers). kombu's
`json` serializer stays as kombu ships it for everything else in the process: worker
events and control replies carry floats (timestamps, load averages, rusage, the args
of tasks in hand), and Flower, `celery inspect` and `celery events` do arithmetic on
them and write them out as JSON, which a `Decimal` breaks.

Why a request class: the JSON text of a number is gone once it is decoded to a float,
so exactness has to be decided when the body is decoded, and per task, because an
outside producer's plain `send_task` labels a pulse batch `application/json` like any
other message. Celery builds one request per task message with the task's `Request`
class (`Task.Request`, a documented extension point). The worker's main process
decodes the body with kombu's `json` for its own bookkeeping (logs, events,
`inspect active|reserved|scheduled`, Flower); the pool process that runs the task
decodes the body again, through kombu's registry, by the content type the request
hands it. `ExactJsonRequest` hands the same bytes under `EXACT_JSON_CONTENT_TYPE`,
registered to `loads_decimal`: the task receives Decimal amounts, nothing else
changes, and the main process does no extra work.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from celery.worker.request import Request
from kombu.serialization import registry
from kombu.utils import json as kombu_json

JSON_CONTENT_TYPE = "application/json"
# A serializer of our own beside kombu's `json`, which it leaves alone. Same wire
# format; it must be in the worker's accept_content for the pool process to decode it.
EXACT_JSON = "exact-json"
EXACT_JSON_CONTENT_TYPE = "application/x-ingestor-exact-json"

# NaN and Infinity too, so the schema can say "must be finite" rather than "is a float".
# One decoder for the process: json.loads with arguments builds a new one per call.
# kombu's object hook turns its tagged values ({"__type__": "decimal", ...}) back.
_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=Decimal, object_hook=kombu_json.object_hook)


def loads_decimal(data: bytes | str | bytearray | memoryview):
    """Decode a JSON message body with fractional numbers as `Decimal`."""
    if not isinstance(data, str):
        data = bytes(data).decode("utf-8")
    return _DECODER.decode(data)


def register_exact_json() -> None:
    """Register the `exact-json` serializer (JSON written by kombu, read by `loads_decimal`).

    Registering a new name changes no existing serializer; `json` stays kombu's own.
    """
    registry.register(
        EXACT_JSON,
        kombu_json.dumps,
        loads_decimal,
        content_type=EXACT_JSON_CONTENT_TYPE,
        content_encoding="utf-8",
    )


class ExactJsonRequest(Request):
    """Celery's task request; the pool process decodes a JSON body with `loads_decimal`.

    Only the content type handed to the pool changes, never the body, so what the
    broker delivered is what the task reads. Anything but JSON (the worker accepts
    nothing else today) keeps Celery's own handling.
    """

    _content_type: str | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # `_content_type` is what Celery passes to the pool with the body
        # (`execute_using_pool`); None means "already decoded" (a protocol 1 message).
        if self._content_type == JSON_CONTENT_TYPE:
            self._content_type = EXACT_JSON_CONTENT_TYPE
