"""Every `flask` command with a service down: one line naming the service, exit 1, no traceback.

An operator runs these by hand, often during an incident; a stack trace hides which
service is out and looks like a bug in the command.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[2]
# Ports nothing listens on: each service is refused at once.
DEAD = {
    "DATABASE_URL": "postgresql+psycopg2://postgres@127.0.0.1:1/nowhere",
    "REDIS_URL": "redis://127.0.0.1:1/0",
    "BROKER_URL": "amqp://guest:guest@127.0.0.1:1//",
}
COMMANDS = [
    (["users", "create", "someone", "--password", "a long enough password"], "PostgreSQL"),
    (["users", "disable", "someone"], "PostgreSQL"),
    (["users", "enable", "someone"], "PostgreSQL"),
    (["users", "delete", "someone"], "PostgreSQL"),
    (["pulses", "stats"], None),
    (["pulses", "flush", "--wait", "1"], None),
    (["pulses", "populate", "--total", "10"], "RabbitMQ"),
    (["pulses", "replay-dead-letters"], "RabbitMQ"),
    (["pulses", "replay-rejected", "--dry-run"], None),
    (["db", "create"], "PostgreSQL"),
]


def run_flask(arguments: list[str], environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`flask --app ingestor <arguments>` in a child process, its output captured."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("flask")), "--app", "ingestor", *arguments],
        cwd=REPOSITORY,
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(("arguments", "service"), COMMANDS, ids=[" ".join(c[:2]) for c, _ in COMMANDS])
def test_a_command_names_the_service_that_is_down_in_one_line(arguments, service):
    result = run_flask(arguments, DEAD)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    names = [service] if service else ["PostgreSQL", "Redis", "RabbitMQ"]
    assert last_line.startswith("Error: ") and any(name in last_line for name in names), result.stderr


def test_stats_names_redis_when_only_redis_is_down(settings, database):
    environment = {"DATABASE_URL": settings.database_url, "REDIS_URL": DEAD["REDIS_URL"]}
    result = run_flask(["pulses", "stats"], environment)

    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: Redis: "), result.stderr
