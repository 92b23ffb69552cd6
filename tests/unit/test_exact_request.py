"""Unit tests of the pulse tasks' request class: exact amounts for the task only."""

from __future__ import annotations

from decimal import Decimal

from celery import Celery
from kombu import serialization
from kombu.message import Message

from ingestor.messaging.serialization import (
    EXACT_JSON_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    ExactJsonRequest,
    register_exact_json,
)

ACCEPT = {JSON_CONTENT_TYPE, EXACT_JSON_CONTENT_TYPE}


def count(pulses: list[object]) -> None:
    """Stands for a pulse task."""


def request_for(args: list[object]) -> ExactJsonRequest:
    """The request a worker builds for a task message `send_task` would publish."""
    app = Celery("unit", set_as_current=False)
    task = app.task(name="unit.pulses", Request=ExactJsonRequest, shared=False)(count)
    app.finalize()
    headers, _properties, body, _sent = app.amqp.as_task_v2("task-1", "unit.pulses", args=args)
    content_type, encoding, data = serialization.dumps(body, "json")
    message = Message(
        body=data, content_type=content_type, content_encoding=encoding, headers=headers, accept=ACCEPT
    )
    return ExactJsonRequest(message, app=app, task=task)


def test_the_pool_process_reads_json_numbers_as_decimals() -> None:
    register_exact_json()
    request = request_for([[{"used_amount": 0.1}, {"used_amount": 12345678.123456}]])

    args, _kwargs, _embed = serialization.loads(
        request.body, request.content_type, request.content_encoding, accept=ACCEPT
    )

    amounts = [pulse["used_amount"] for pulse in args[0]]
    assert amounts == [Decimal("0.1"), Decimal("12345678.123456")]
    assert all(type(amount) is Decimal for amount in amounts)


def test_the_main_process_view_and_kombus_json_keep_floats() -> None:
    register_exact_json()
    request = request_for([[{"used_amount": 0.1}]])

    # What inspect and Flower are shown: kombu's standard decoding.
    assert type(request.args[0][0]["used_amount"]) is float
    assert request.content_type == EXACT_JSON_CONTENT_TYPE
    assert type(serialization.loads('{"a": 0.5}', JSON_CONTENT_TYPE, "utf-8")["a"]) is float


def test_the_body_is_handed_on_unchanged() -> None:
    request = request_for([[{"used_amount": 0.1}]])

    assert request.body == request._message.body
