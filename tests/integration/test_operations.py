"""Operating the ingestor: logs without secrets, /metrics, and the `flask pulses` commands."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from kombu import Connection

from ingestor import create_app
from ingestor.messaging.dead_letters import ORIGIN_QUEUE_HEADER, REASON_HEADER
from ingestor.messaging.topology import DEAD_LETTERS, RAW_PULSES, dead_letter_exchange, dead_letter_queue
from ingestor.pulses.ingest import ingest_batch
from ingestor.pulses.task_names import INGEST_PULSES
from tests.support.api import PASSWORD
from tests.support.logs import json_lines_of
from tests.support.pulses import pulse
from tests.support.services import settings_for_tests
from tests.support.worker import queue_depth

pytestmark = pytest.mark.usefixtures("clean_state")


@pytest.fixture
def json_root_log():
    """Everything logged to the root logger during the test, as the JSON lines it would be."""
    with json_lines_of(logging.getLogger()) as stream:
        yield stream


def test_a_login_never_logs_the_password_or_the_token(client, user, json_root_log):
    wrong = client.post("/api/v1/login", json={"username": user, "password": "wrong " + PASSWORD})
    right = client.post("/api/v1/login", json={"username": user, "password": PASSWORD})
    token = right.get_json()["access_token"]
    client.get("/api/v1/pulses", headers={"Authorization": f"Bearer {token}"})

    assert (wrong.status_code, right.status_code) == (401, 200)
    text = json_root_log.getvalue()
    assert PASSWORD not in text and token not in text and token.split(".")[2] not in text
    lines = [json.loads(line) for line in text.splitlines()]
    requests = [line for line in lines if line["logger"] == "ingestor.http"]
    assert [(r["route"], r["status"]) for r in requests] == [
        ("/api/v1/login", 401),
        ("/api/v1/login", 200),
        ("/api/v1/pulses", 200),
    ]
    assert all(isinstance(r["duration_ms"], float) for r in requests)


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the Prometheus text `text`, None if absent."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match and dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or "")) == labels:
            return float(match.group(2))
    return None


def test_metrics_are_public_and_count_http_pulses_by_batch(client, auth):
    before = client.get("/metrics").get_data(as_text=True)
    pulses = [pulse(), pulse(used_amount="-1"), pulse(tenant="", used_amount="x")]
    assert client.post("/api/v1/pulses", json=pulses, headers=auth).status_code == 202

    response = client.get("/metrics")
    assert response.status_code == 200 and response.content_type.startswith("text/plain")
    text = response.get_data(as_text=True)

    def grew(name: str, **labels: str) -> float:
        return (metric_value(text, name, **labels) or 0) - (metric_value(before, name, **labels) or 0)

    assert grew("ingestor_http_pulses_enqueued_total") == 1
    assert grew("ingestor_pulses_rejected_total", source="http", field="used_amount", reason="negative") == 1
    assert (
        grew("ingestor_pulses_rejected_total", source="http", field="used_amount", reason="not_a_number") == 1
    )
    assert grew("ingestor_pulses_rejected_total", source="http", field="tenant", reason="length") == 1
    assert grew("ingestor_http_requests_total", method="POST", route="/api/v1/pulses", status="202") == 1
    assert metric_value(text, "ingestor_redis_up") == 1
    assert metric_value(text, "ingestor_redis_windows_pending") == 0


def test_metrics_need_the_token_when_one_is_set(settings):
    app = create_app(settings_for_tests(metrics_token="scrape-me-" + "x" * 20))
    client = app.test_client()

    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert (
        client.get("/metrics", headers={"Authorization": "Bearer scrape-me-" + "x" * 20}).status_code == 200
    )


def test_the_redis_gauges_show_pending_windows_and_their_age(app, client):
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    services = app.extensions["pulses"]
    pulse = {
        "tenant": "t",
        "product_sku": "s",
        "use_unity": "u",
        "used_amount": "1",
        "timestamp": hour.isoformat(),
    }
    ingest_batch(
        [pulse],
        message_id="m1",
        source="test",
        validator=services.validator,
        counter=services.counter,
        database=app.extensions["database"],
    )

    text = client.get("/metrics").get_data(as_text=True)

    assert metric_value(text, "ingestor_redis_windows_pending") == 1
    age = metric_value(text, "ingestor_redis_oldest_pending_window_age_seconds")
    assert 0 <= age <= (datetime.now(UTC) - hour).total_seconds() + 1


def test_stats_shows_pending_windows_groups_last_persist_and_rejections(app):
    services = app.extensions["pulses"]
    now = datetime.now(UTC)
    # An earlier hour inside the late limit (a fixed date falls out of it with time).
    hour = (now - timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
    pulses = [
        {
            "tenant": f"t{i % 3}",
            "product_sku": "s",
            "use_unity": "u",
            "used_amount": "1",
            "timestamp": (hour if i < 4 else now).isoformat(),
        }
        for i in range(6)
    ] + [{"tenant": "t", "product_sku": "s", "use_unity": "u", "used_amount": "-5"}]
    ingest_batch(
        pulses,
        message_id="m2",
        source="test",
        validator=services.validator,
        counter=services.counter,
        database=app.extensions["database"],
        received_at=now,
    )
    runner = app.test_cli_runner()

    before = runner.invoke(args=["pulses", "stats"])
    assert before.exit_code == 0, before.output
    assert re.search(r"pending windows:\s+2\n", before.output)
    # t0, t1, t2 in the old hour (pulses 0-3: t0 twice), t1 and t2 in the current one.
    assert re.search(r"pending groups:\s+5\n", before.output)
    assert f"oldest pending hour: {hour.isoformat()}" in before.output
    assert re.search(r"last persist:\s+never", before.output)
    assert re.search(r"rejected pulses:\s+1\n", before.output)

    assert runner.invoke(args=["pulses", "flush"]).exit_code == 0
    after = runner.invoke(args=["pulses", "stats"])
    assert re.search(r"pending windows:\s+0\n", after.output) and "oldest pending hour: -" in after.output
    assert re.search(r"last persist:\s+\d{4}-.*\(2 batch\(es\)\)", after.output)


def test_populate_publishes_every_pulse_in_batches_with_a_rate(app, settings):
    result = app.test_cli_runner().invoke(args=["pulses", "populate", "--total", "1050", "--batch", "100"])

    assert result.exit_code == 0, result.output
    assert re.search(
        r"published 1050 pulses in 11 message\(s\) in [\d.]+s \([\d,]+ pulses/s\)", result.output
    )
    ids, total = set(), Decimal(0)
    assert queue_depth(settings.broker_url, "pulses") == 11
    with Connection(settings.broker_url) as connection:
        channel = connection.default_channel
        for _ in range(11):
            message = channel.basic_get("pulses", no_ack=True)
            assert message.headers["task"] == INGEST_PULSES
            (batch,), _, _ = json.loads(message.body)
            ids.update(p["id"] for p in batch)
            total += sum(Decimal(p["used_amount"]) for p in batch)
    assert len(ids) == 1050 and total > 0


def dead_letter_one(broker_url: str, queue_name: str) -> None:
    """Take the next message of `queue_name` and reject it: RabbitMQ dead-letters it."""
    with Connection(broker_url) as connection:
        channel = connection.default_channel
        message = channel.basic_get(queue_name, no_ack=False)
        assert message is not None, queue_name
        channel.basic_reject(message.delivery_tag, requeue=False)


def test_replay_moves_dead_letters_back_where_they_died(app, settings, producer):
    task_id = "replayed-task-1"
    producer.send_task(
        INGEST_PULSES, args=[[{"tenant": "t"}]], task_id=task_id, exchange="pulses", routing_key="pulses"
    )
    with Connection(settings.broker_url) as connection:
        producer_ = connection.Producer()
        # A raw message as the raw consumer dead-letters it (the raw queue has no
        # dead-letter argument): its origin in a header of its own, no x-death.
        producer_.publish(
            b'{"tenant": "raw"}',
            exchange=dead_letter_exchange,
            routing_key=DEAD_LETTERS,
            content_type="application/json",
            message_id="raw-1",
            headers={ORIGIN_QUEUE_HEADER: RAW_PULSES, REASON_HEADER: "its batch failed"},
        )
        # Published straight to the dead-letter exchange: no x-death, no origin.
        producer_.publish(
            b"orphan", exchange=dead_letter_exchange, routing_key=DEAD_LETTERS, declare=[dead_letter_queue]
        )
    dead_letter_one(settings.broker_url, "pulses")
    assert queue_depth(settings.broker_url, DEAD_LETTERS) == 3

    result = app.test_cli_runner().invoke(args=["pulses", "replay-dead-letters"])

    assert result.exit_code == 0, result.output
    assert "replayed 1 message(s) to pulses\n" in result.output
    assert f"replayed 1 message(s) to {RAW_PULSES}\n" in result.output
    assert "1 without origin left" in result.output
    assert queue_depth(settings.broker_url, DEAD_LETTERS) == 1
    with Connection(settings.broker_url) as connection:
        channel = connection.default_channel
        task = channel.basic_get("pulses", no_ack=True)
        raw = channel.basic_get(RAW_PULSES, no_ack=True)
    # Unchanged: the same task id (so the same dedupe keys), the same raw message_id.
    assert task.headers["id"] == task_id and task.headers["task"] == INGEST_PULSES
    assert json.loads(task.body)[0] == [[{"tenant": "t"}]]
    assert "x-death" not in task.headers
    assert raw.body == b'{"tenant": "raw"}' and raw.properties["message_id"] == "raw-1"
    assert not {ORIGIN_QUEUE_HEADER, REASON_HEADER} & set(raw.headers or {})
