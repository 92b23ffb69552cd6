"""POST /api/v1/pulses and /populate: what is accepted is enqueued, what is not changes nothing.

No worker runs in this module: the tests read what reached the queues.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from kombu import Connection

from ingestor import create_app
from ingestor.messaging.serialization import loads_decimal
from ingestor.messaging.topology import populate_queue, pulses_queue
from ingestor.pulses.task_names import INGEST_PULSES, POPULATE_PULSES
from tests.support.pulses import pulse
from tests.support.services import settings_for_tests
from tests.support.worker import queue_depth


def queued_task_args(broker_url: str, queue) -> list:
    """Take every message of `queue` and return their task arguments."""
    found = []
    with Connection(broker_url) as connection:
        bound = queue.bind(connection.default_channel)
        while (message := bound.get(no_ack=True)) is not None:
            args, _kwargs, _embed = loads_decimal(message.body)
            found.append((message.headers["task"], args))
    return found


def test_a_list_is_enqueued_as_one_task_with_timestamps_stamped(client, auth, settings):
    pulses = [
        pulse(id="a-1", used_amount=0.000001),
        # Its own timestamp, with an offset other than UTC: the instant is kept.
        pulse(used_amount="12345678.123456", timestamp=datetime.now(timezone(timedelta(hours=2)))),
        pulse(used_amount=-1),
        pulse(tenant="bad\x00"),
    ]
    before = datetime.now(UTC)

    response = client.post("/api/v1/pulses", json=pulses, headers=auth)

    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["accepted"] == 2
    assert [r["index"] for r in body["rejected"]] == [2, 3]
    assert "used_amount" in body["rejected"][0]["errors"] and "tenant" in body["rejected"][1]["errors"]
    [(task, args)] = queued_task_args(settings.broker_url, pulses_queue)
    assert task == INGEST_PULSES
    [enqueued] = args
    assert [p["used_amount"] for p in enqueued] == ["0.000001", "12345678.123456"]
    assert enqueued[0]["id"] == "a-1" and "id" not in enqueued[1]
    assert datetime.fromisoformat(enqueued[0]["timestamp"]) >= before - timedelta(seconds=1)
    assert datetime.fromisoformat(enqueued[1]["timestamp"]) == datetime.fromisoformat(pulses[1]["timestamp"])


def test_a_single_pulse_object_is_accepted(client, auth, settings):
    response = client.post("/api/v1/pulses", json=pulse(), headers=auth)

    assert response.status_code == 202
    assert response.get_json()["accepted"] == 1
    assert queue_depth(settings.broker_url, "pulses") == 1


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (json.dumps(pulse()), "text/plain", 415),
        ("not json", "application/json", 400),
        ("[]", "application/json", 400),
        ('"a string"', "application/json", 400),
        ("42", "application/json", 400),
        ("null", "application/json", 400),
        ("[" * 100_000 + "]" * 100_000, "application/json", 400),
        (json.dumps([pulse()] * 1001), "application/json", 400),
        ("[" + ",".join([json.dumps(pulse())] * 40_000) + "]", "application/json", 413),
        (b"\xff\xfe{", "application/json", 400),
    ],
)
def test_bodies_that_are_not_pulses_are_4xx_and_enqueue_nothing(
    client, auth, settings, data, content_type, status
):
    response = client.post("/api/v1/pulses", data=data, content_type=content_type, headers=auth)

    assert response.status_code == status, response.get_json()
    assert response.get_json()["error"]["message"]
    assert queue_depth(settings.broker_url, "pulses") == 0


@pytest.mark.parametrize(
    "junk",
    [
        {},
        pulse(used_amount="NaN"),
        pulse(used_amount=True),
        pulse(used_amount=[1]),
        pulse(tenant="x" * 10_000),
        pulse(tenant="'; DROP TABLE pulse_usage; --\n"),
        pulse(timestamp="2026-11-27T10:00:00"),
        [pulse()],
        "pulse",
        None,
    ],
)
def test_only_invalid_pulses_are_422_and_enqueue_nothing(client, auth, settings, junk):
    response = client.post("/api/v1/pulses", json=[junk, junk], headers=auth)

    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "unprocessable"
    assert (
        error["message"]
        == "None of the 2 pulses is valid, so nothing was accepted; see details for the reasons."
    )
    assert error["details"]["accepted"] == 0
    assert [r["index"] for r in error["details"]["rejected"]] == [0, 1]
    assert all(r["errors"] for r in error["details"]["rejected"])
    assert queue_depth(settings.broker_url, "pulses") == 0


def test_broker_unreachable_is_503_and_nothing_is_accepted(auth):
    app = create_app(settings_for_tests(broker_url="amqp://guest:guest@127.0.0.1:1//"))
    response = app.test_client().post("/api/v1/pulses", json=[pulse()], headers=auth)

    assert response.status_code == 503 and response.headers["Retry-After"].isdigit()
    error = response.get_json()["error"]
    assert error["code"] == "service_unavailable" and "retry" in error["message"]
    assert error["details"] == {"service": "rabbitmq"} and "Nothing was accepted" in error["message"]


@pytest.mark.parametrize(
    ("overrides", "failing"),
    [
        ({"broker_url": "amqp://guest:guest@127.0.0.1:1//"}, "rabbitmq"),
        ({"redis_url": "redis://127.0.0.1:1/0"}, "redis"),
        ({"database_url": "postgresql+psycopg2://postgres@127.0.0.1:1/none"}, "postgresql"),
    ],
)
def test_ready_names_the_unreachable_service(client, overrides, failing):
    assert client.get("/ready").status_code == 200
    response = create_app(settings_for_tests(**overrides)).test_client().get("/ready")

    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable" and body["error"]["details"] == {"services": [failing]}
    assert [name for name, state in body["services"].items() if state != "ok"] == [failing]
    assert body["services"][failing] == "unavailable"
    assert ":1" not in response.get_data(as_text=True)  # no host:port from the driver


def test_populate_enqueues_one_task_per_worker_and_reports_progress(client, auth, settings):
    response = client.post(
        "/api/v1/pulses/populate",
        json={"total_messages": 103, "workers_number": 4, "buffer_size": 10},
        headers=auth,
    )

    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert (job["total"], job["published"], job["done"], job["workers"]) == (103, 0, False, 4)
    tasks = queued_task_args(settings.broker_url, populate_queue)
    assert [name for name, _ in tasks] == [POPULATE_PULSES] * 4
    assert sorted(args[2] for _, args in tasks) == [25, 26, 26, 26]
    progress = client.get(f"/api/v1/pulses/populate/{job['job_id']}", headers=auth)
    assert progress.status_code == 200 and progress.get_json()["total"] == 103


@pytest.mark.parametrize("body", [{}, {"total_messages": 0, "workers_number": -3, "buffer_size": 0}])
def test_populate_defaults_like_the_first_version(client, auth, body):
    job = client.post("/api/v1/pulses/populate", json=body, headers=auth).get_json()

    assert (job["total"], job["workers"], job["buffer_size"]) == (100, 5, 50)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"total_messages": 10**9}, "total_messages"),
        ({"workers_number": 51}, "workers_number"),
        ({"buffer_size": 5000}, "buffer_size"),
        ({"total_messages": "100"}, "total_messages"),
        ({"total_messages": 1.5}, "total_messages"),
        ({"total_messages": True}, "total_messages"),
        ({"rate": 3}, "rate"),
    ],
)
def test_populate_rejects_bad_values_and_enqueues_nothing(client, auth, settings, body, field):
    response = client.post("/api/v1/pulses/populate", json=body, headers=auth)

    assert response.status_code == 400
    assert field in json.dumps(response.get_json()["error"]["details"])
    assert queue_depth(settings.broker_url, "populate") == 0


def test_unknown_populate_job_is_404(client, auth):
    response = client.get("/api/v1/pulses/populate/no-such-job", headers=auth)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_unknown_routes_and_methods_answer_json(client, auth):
    missing = client.get("/api/v1/nothing-here", headers=auth)
    wrong_method = client.put("/api/v1/pulses", headers=auth)

    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"
    assert wrong_method.status_code == 405
    assert wrong_method.get_json()["error"]["code"] == "method_not_allowed"
    assert "GET" in wrong_method.headers["Allow"]


def test_an_unexpected_exception_is_a_json_500_without_details(auth):
    app = create_app(settings_for_tests())

    @app.get("/api/v1/boom")
    def boom():
        raise RuntimeError("secret internals")

    response = app.test_client().get("/api/v1/boom")

    assert response.status_code == 500
    assert response.get_json() == {
        "error": {"code": "internal_error", "message": "Internal error; it has been logged."}
    }
