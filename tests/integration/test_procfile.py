"""Each Procfile line, run for real as a platform runs it (`sh -c`, its own process group).

release migrates; web answers /health and /metrics; worker answers a ping, serves
its pool's metrics and, SIGTERMed mid-batch, finishes that batch before it exits;
beat sends the persist task on schedule. Every process stops on SIGTERM and writes
nothing but JSON lines with LOG_FORMAT=json.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kombu import Connection
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ingestor.pulses.task_names import INGEST_PULSES, PERSIST_PULSES
from tests.integration.test_operations import metric_value
from tests.support.ledger import Ledger, make_pulses, persisted_sums
from tests.support.procfile import ROOT, ProcfileProcess, free_port
from tests.support.pulses import pulse
from tests.support.services import recreate_database, settings_env
from tests.support.windows import live_fields
from tests.support.worker import queue_counts, queue_depth

BIN = str(Path(sys.executable).parent)


def process_env(settings, **overrides: str) -> dict[str, str]:
    """The environment of a Procfile process pointed at the test services."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(settings_env(settings))
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", LOG_FORMAT="json", PYTHONUNBUFFERED="1", **overrides)
    return env


def get(url: str, timeout: float = 5) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # our own test server
        return response.status, response.read().decode()


def wait_for(condition, timeout: float, process: ProcfileProcess, what: str):
    """Poll `condition` until it returns something truthy; fail if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.exited():
            raise AssertionError(f"{process.name} exited while waiting for {what}:\n{process.tail()}")
        try:
            result = condition()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"{process.name}: no {what} after {timeout}s:\n{process.tail()}")


def test_release_migrates_a_fresh_database(settings):
    url = make_url(settings.database_url)
    scratch = url.set(database=f"{url.database}_release").render_as_string(hide_password=False)
    recreate_database(scratch)
    try:
        release = ProcfileProcess("release", process_env(settings, DATABASE_URL=scratch))
        assert release.run(timeout=120) == 0, release.tail()
        engine = create_engine(scratch)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
            assert connection.execute(text("SELECT count(*) FROM pulse_usage")).scalar() == 0
        engine.dispose()
    finally:
        admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{url.database}_release" WITH (FORCE)'))
        admin.dispose()


def test_web_serves_health_and_summed_metrics_then_stops_on_sigterm(settings):
    port = free_port()
    # GUNICORN_CMD_ARGS is gunicorn's own override: loopback only, for a test.
    env = process_env(
        settings, PORT=str(port), WEB_CONCURRENCY="2", GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{port}"
    )
    web = ProcfileProcess("web", env).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: get(f"{base}/health")[0] == 200, 60, web, "answer on /health")
        for _ in range(7):
            assert get(f"{base}/health") == (200, '{"status":"ok"}\n')
        status, metrics = get(f"{base}/metrics")
        assert status == 200
        # Every /health answered so far, whichever of the two workers answered it.
        assert (
            metric_value(metrics, "ingestor_http_requests_total", method="GET", route="/health", status="200")
            == 8
        )
        assert metric_value(metrics, "ingestor_redis_up") == 1

        assert web.terminate(timeout=30), web.tail()
    finally:
        web.kill()
    lines = web.json_lines()
    assert any(line.get("route") == "/health" and line.get("status") == 200 for line in lines)
    assert any(line["logger"] == "gunicorn.error" and "Shutting down" in line["message"] for line in lines)


def window_count(redis_client, hour: datetime) -> int:
    """Pulses counted in the live window of `hour`."""
    fields = live_fields(redis_client, hour)
    return sum(int(v) for f, v in fields.items() if f.startswith(b"n|"))


@pytest.mark.usefixtures("clean_state")
def test_worker_pings_serves_metrics_and_finishes_its_batch_on_sigterm(
    settings, producer, redis_client, database, app
):
    metrics_port = free_port()
    env = process_env(
        settings, REDIS_CHUNK_SIZE="5", METRICS_PORT=str(metrics_port), METRICS_HOST="127.0.0.1"
    )
    node = f"celery@{socket.gethostname()}"
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    ledger = Ledger()
    small = [pulse(tenant="t", product_sku="vm", use_unity="h", used_amount="0.5", timestamp=hour)] * 10
    small += [pulse(tenant="t", product_sku="vm", use_unity="h", used_amount="-1")] * 2
    for _ in range(10):
        ledger.add("t", "vm", "h", hour, "0.5")
    big_hour = hour - timedelta(hours=1)
    big = make_pulses(ledger, 20_000, prefix="big", hour=big_hour, with_ids=False)

    worker = ProcfileProcess("worker", env).start()
    try:
        wait_for(lambda: producer.control.ping(destination=[node], timeout=1), 60, worker, "ping answer")
        # What the compose healthcheck runs.
        ping = subprocess.run(
            [f"{BIN}/celery", "-A", "ingestor", "inspect", "ping", "-d", node],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=60,
        )
        assert ping.returncode == 0, ping.stdout + ping.stderr

        producer.send_task(INGEST_PULSES, args=[small], exchange="pulses", routing_key="pulses")

        def task_metrics():
            text = get(f"http://127.0.0.1:{metrics_port}/metrics")[1]
            return text if metric_value(text, "ingestor_pulses_accepted_total", source="task") == 10 else None

        metrics = wait_for(task_metrics, 60, worker, "metrics of the first batch")
        assert (
            metric_value(
                metrics,
                "ingestor_pulses_rejected_total",
                source="task",
                field="used_amount",
                reason="negative",
            )
            == 2
        )
        assert metric_value(metrics, "ingestor_batch_duration_seconds_count", source="task") == 1
        # Every task run is timed and counted by outcome, around the task's body.
        assert metric_value(metrics, "ingestor_tasks_total", task=INGEST_PULSES, outcome="success") == 1
        assert metric_value(metrics, "ingestor_task_duration_seconds_count", task=INGEST_PULSES) == 1
        assert metric_value(metrics, "ingestor_redis_windows_pending") == 1

        producer.send_task(INGEST_PULSES, args=[big], exchange="pulses", routing_key="pulses")
        wait_for(lambda: window_count(redis_client, big_hour) > 0, 60, worker, "the big batch starting")
        counted_at_signal = window_count(redis_client, big_hour)
        assert worker.terminate(timeout=90), worker.tail()
    finally:
        worker.kill()

    assert counted_at_signal < len(big), "the SIGTERM must land mid-batch"
    # The batch in hand was finished, then acked: nothing left to redeliver.
    assert window_count(redis_client, big_hour) == len(big)
    assert queue_counts("pulses") == (0, 0)
    app.extensions["pulses"].persister.persist_pending()
    assert persisted_sums(database) == ledger.expected()

    # Celery prints this one from its signal handler, where logging could deadlock.
    lines = worker.json_lines(allowed=("worker: Warm shutdown (MainProcess)",))
    assert "worker: Warm shutdown (MainProcess)" in worker.output()
    ingested = [line for line in lines if line.get("logger") == "ingestor.pulses.ingest"]
    assert {line["counted"] for line in ingested} == {10, len(big)}
    assert all(line["task_name"] == INGEST_PULSES and line["task_id"] for line in ingested)
    # No task was cut off. (A pool process that never ran a task still dies on the
    # group's SIGTERM, which billiard logs as an error: harmless, it held nothing.)
    assert "WorkerLostError" not in worker.output()
    assert not [line for line in lines if line["level"] == "ERROR" and line["logger"] != "multiprocessing"]


@pytest.mark.usefixtures("clean_state")
def test_beat_sends_the_persist_task_on_schedule(settings, tmp_path):
    # Every minute: the one long wait of the suite (up to a minute boundary).
    env = process_env(settings, PERSIST_SCHEDULE="* * * * *", PYTHONPATH=str(ROOT))
    beat = ProcfileProcess("beat", env, cwd=tmp_path).start()  # its schedule file goes to tmp_path
    try:
        wait_for(
            lambda: queue_depth(settings.broker_url, "persist") >= 1, 75, beat, "persist task in the queue"
        )
        assert beat.terminate(timeout=30), beat.tail()
    finally:
        beat.kill()
    with Connection(settings.broker_url) as connection:
        message = connection.default_channel.basic_get("persist", no_ack=True)
    assert message.headers["task"] == PERSIST_PULSES
    lines = beat.json_lines()
    assert any("Sending due task" in line["message"] for line in lines), beat.tail()
