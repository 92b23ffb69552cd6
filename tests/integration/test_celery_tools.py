"""Celery's own tools against a real worker, and exact pulse amounts beside them.

Flower, `celery inspect`, `celery control` and `celery events` are software nobody
here wrote: they decode worker events and control replies with kombu's standard JSON,
floats included. The pulse tasks must still read `0.1` (a JSON number, as plain
`send_task` writes it) as the decimal it is. Both hold at once, on one worker.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from kombu import serialization

from ingestor.settings import Settings
from tests.support.ledger import persisted_sums
from tests.support.services import settings_env
from tests.support.worker import WorkerProcess, wait_until_idle

pytestmark = pytest.mark.usefixtures("clean_state")

ROOT = Path(__file__).resolve().parents[2]
QUEUES = ("pulses", "persist")


def celery_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1", **extra}


def celery_cli(settings: Settings, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """Run `celery -A ingestor ARGS` as an operator would, against the test vhost."""
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "ingestor", *args],
        cwd=ROOT,
        env=celery_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def hour_ago() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)


def send_pulses(producer, pulses: list[dict[str, Any]]) -> None:
    """Exactly as the README tells another service to publish."""
    producer.send_task("ingestor.ingest_pulses", args=[pulses], exchange="pulses", routing_key="pulses")


def test_the_process_wide_json_decoder_is_kombus_own(app):
    # Building the app (and its Celery app) must not change how every other message
    # of the process decodes: events and control replies carry floats.
    assert type(serialization.loads('{"a": 0.5}', "application/json", "utf-8")["a"]) is float


def test_json_numbers_in_pulse_tasks_sum_exactly(producer, worker, database):
    hour = hour_ago()
    pulse = {"tenant": "exact", "product_sku": "vm", "use_unity": "h", "timestamp": hour.isoformat()}
    # JSON numbers, written by Celery's default json serializer: `0.1`, not "0.1".
    send_pulses(producer, [{**pulse, "id": f"b-{index}", "used_amount": 0.1} for index in range(3)])
    producer.send_task(
        "ingestor.ingest_pulse",
        args=[{**pulse, "id": "single", "product_sku": "fn", "used_amount": 12345678.123456}],
        exchange="pulses",
        routing_key="pulses",
    )
    wait_until_idle(producer, worker, QUEUES)
    producer.send_task("ingestor.persist_pulses", exchange="persist", routing_key="persist")
    wait_until_idle(producer, worker, QUEUES)

    assert persisted_sums(database) == {
        ("exact", "vm", "h", hour): (Decimal("0.3"), 3),
        ("exact", "fn", "h", hour): (Decimal("12345678.123456"), 1),
    }


@pytest.mark.parametrize("command", ["stats", "active", "registered", "conf", "ping"])
def test_celery_inspect_answers_normally(settings, worker, command):
    result = celery_cli(settings, "inspect", command, "-d", worker.name, "--timeout", "10", "--json")

    assert result.returncode == 0, result.stdout + result.stderr
    replies = json.loads(result.stdout)
    assert worker.name in replies, replies
    reply = replies[worker.name]
    if command == "stats":
        assert reply["pid"] == worker.process.pid
        assert isinstance(reply["rusage"]["utime"], float)
    if command == "registered":
        assert "ingestor.ingest_pulses" in reply
    if command == "conf":
        assert reply["task_acks_late"] is True


HELD_SECONDS = 40


def test_a_pulse_task_in_hand_shows_in_inspect_and_still_sums_exactly(settings, producer, worker, database):
    # A task the worker holds (here: until its countdown) is listed with its args by
    # `inspect scheduled|active|reserved` and Flower: standard JSON, floats included.
    hour = hour_ago()
    pulse = {
        "id": "held",
        "tenant": "held",
        "product_sku": "vm",
        "use_unity": "h",
        "used_amount": 0.1,
        "timestamp": hour.isoformat(),
    }
    task_id = producer.send_task(
        "ingestor.ingest_pulses",
        args=[[pulse]],
        exchange="pulses",
        routing_key="pulses",
        countdown=HELD_SECONDS,
    ).id

    # Each `celery inspect` starts a Python process: seconds on a loaded machine.
    deadline = time.monotonic() + HELD_SECONDS - 10
    while True:
        result = celery_cli(settings, "inspect", "scheduled", "-d", worker.name, "--timeout", "10", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        held = [entry["request"] for entry in json.loads(result.stdout)[worker.name]]
        if held or time.monotonic() > deadline:
            break
    assert [request["id"] for request in held] == [task_id]
    assert held[0]["args"] == [[pulse]]
    assert type(held[0]["args"][0][0]["used_amount"]) is float

    wait_until_idle(producer, worker, QUEUES)
    producer.send_task("ingestor.persist_pulses", exchange="persist", routing_key="persist")
    wait_until_idle(producer, worker, QUEUES)
    assert persisted_sums(database) == {("held", "vm", "h", hour): (Decimal("0.1"), 1)}


def test_celery_inspect_stats_prints_normally(settings, worker):
    # The plain (not --json) output: what an operator types first.
    result = celery_cli(settings, "inspect", "stats", "-d", worker.name, "--timeout", "10")

    assert result.returncode == 0, result.stdout + result.stderr
    assert worker.name in result.stdout and '"rusage"' in result.stdout, result.stdout


def test_celery_control_answers_normally(settings, worker):
    for command in ("enable_events", "disable_events"):
        result = celery_cli(settings, "control", command, "-d", worker.name, "--timeout", "10")
        assert result.returncode == 0, result.stdout + result.stderr
        assert re.search(rf"->\s+{re.escape(worker.name)}: OK", result.stdout), result.stdout


@pytest.fixture
def events_enabled(settings, worker) -> Iterator[None]:
    assert celery_cli(settings, "control", "enable_events", "-d", worker.name).returncode == 0
    yield
    celery_cli(settings, "control", "disable_events", "-d", worker.name)


@pytest.fixture
def started(request) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts, each stopped (SIGINT, then SIGKILL) at its end."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(15)


def test_celery_events_dump_captures_the_ingest_tasks(
    settings, producer, worker, events_enabled, started, tmp_path
):
    log = tmp_path / "events.log"
    with log.open("wb") as out:
        dump = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "ingestor", "events", "--dump"],
            cwd=ROOT,
            env=celery_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=default_sigint,
        )
    started.append(dump)
    pulse = {"id": "ev-1", "tenant": "events", "product_sku": "vm", "use_unity": "h", "used_amount": 0.25}

    deadline = time.monotonic() + 60
    while "ingestor.ingest_pulses" not in log.read_text(errors="replace"):
        assert dump.poll() is None, f"celery events exited {dump.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no ingest task event in 60 s:\n{log.read_text()}"
        send_pulses(producer, [pulse])  # until the dumper, starting up, sees one
        time.sleep(1)
    dump.send_signal(signal.SIGINT)
    dump.wait(15)

    output = log.read_text(errors="replace")
    assert "task received" in output or "task succeeded" in output, output
    assert "Traceback" not in output and "Failed" not in output, output


def default_sigint() -> None:
    """In the child: SIGINT stops it, even when the test run itself ignores SIGINT.

    A shell starts background jobs (`cmd &` without job control, nohup) with SIGINT
    ignored, and children inherit that: `celery events` would never hear its Ctrl-C.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except OSError as error:
        return 0, repr(error)


def test_flower_sees_the_worker_and_the_ingest_tasks(
    settings, producer, worker: WorkerProcess, started, tmp_path
):
    port = free_port()
    log = tmp_path / "flower.log"
    with log.open("wb") as out:
        flower = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "ingestor",
                "flower",
                "--address=127.0.0.1",
                f"--port={port}",
            ],
            cwd=ROOT,
            env=celery_env(settings, FLOWER_UNAUTHENTICATED_API="true"),
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=default_sigint,
        )
    started.append(flower)
    base = f"http://127.0.0.1:{port}"

    deadline = time.monotonic() + 90
    status, workers = get_json(f"{base}/api/workers?refresh=1")
    while not (status == 200 and worker.name in workers):
        assert flower.poll() is None, f"flower exited {flower.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"/api/workers: {status} {workers}\n{log.read_text()}"
        time.sleep(1)
        status, workers = get_json(f"{base}/api/workers?refresh=1")
    assert workers[worker.name]["stats"]["pid"] == worker.process.pid

    # Flower turns the worker's events on by itself (every few seconds).
    pulse = {"id": "fl-1", "tenant": "flower", "product_sku": "vm", "use_unity": "h", "used_amount": 0.5}
    deadline = time.monotonic() + 60
    status, tasks = get_json(f"{base}/api/tasks")
    while not (status == 200 and any(t.get("name") == "ingestor.ingest_pulses" for t in tasks.values())):
        assert time.monotonic() < deadline, f"/api/tasks: {status} {tasks}\n{log.read_text()}"
        send_pulses(producer, [pulse])
        time.sleep(1)
        status, tasks = get_json(f"{base}/api/tasks")
    assert "Failed to capture events" not in log.read_text(errors="replace")
