"""The contracts others rely on: the README's producer snippet, the operator's flush
and migrate commands, and a schema that matches the models."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from alembic import command

from ingestor.database import alembic_config
from ingestor.pulses import keys
from ingestor.pulses.aggregation import pulse_with_id
from tests.support.ledger import persisted_sums, persisted_sums_per_group
from tests.support.readme import readme_snippet, run_snippet
from tests.support.worker import wait_until_idle, wait_until_settled

pytestmark = pytest.mark.usefixtures("clean_state")


def test_the_readme_producer_snippet_reaches_the_sums(producer, worker, settings, database):
    # Run as another service would: a fresh interpreter that only has Celery.
    run_snippet(readme_snippet("producer-snippet"), settings.broker_url)
    wait_until_idle(producer, worker, ("pulses",))
    producer.send_task("ingestor.persist_pulses", exchange="persist", routing_key="persist")
    wait_until_idle(producer, worker, ("pulses", "persist"))

    assert persisted_sums_per_group(database) == {
        ("acme", "vm.small", "vCPU-hour"): Decimal("2.5"),
        ("acme", "object-storage", "GB"): Decimal("0.000001"),
    }


def test_the_readme_walkthrough_counts_each_snippets_pulses(producer, worker, settings, app, database):
    # In the README's order: the Celery snippet, the raw-queue snippet, then the flush
    # the README tells a newcomer to run to see the sums now. Each pulse counts once.
    run_snippet(readme_snippet("producer-snippet"), settings.broker_url)
    run_snippet(readme_snippet("raw-producer-snippet"), settings.broker_url, absent=("ingestor", "celery"))
    wait_until_idle(producer, worker, ("pulses",))
    wait_until_settled(worker, settings.raw_queue)

    result = app.test_cli_runner().invoke(args=["pulses", "flush"])

    assert result.exit_code == 0, result.output
    assert persisted_sums_per_group(database) == {
        ("acme", "vm.small", "vCPU-hour"): Decimal("5.0"),
        ("acme", "object-storage", "GB"): Decimal("0.000002"),
    }


def test_flask_pulses_flush_persists_now(app, database):
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    app.extensions["pulses"].counter.count(
        [
            pulse_with_id(
                "ops",
                "1",
                keys.window_key(keys.SHARD_TAGS[0], keys.hour_of(hour), "ops"),
                keys.group_field("ops", "cli", "run"),
                1_500_000,
            )
        ]
    )

    result = app.test_cli_runner().invoke(args=["pulses", "flush"])

    assert result.exit_code == 0, result.output
    assert "1 snapshot(s): 1 group(s), 1 pulse(s)" in result.output
    assert persisted_sums(database) == {("ops", "cli", "run", hour): (Decimal("1.5"), 1)}


def test_the_migrations_build_exactly_the_models(settings):
    # Raises if `alembic revision --autogenerate` would find anything to do.
    command.check(alembic_config(settings.database_url))


def flask_db_upgrade(database_url: str, command: str = "upgrade") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "ingestor", "db", command],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "INFO"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_flask_db_upgrade_prints_one_line_and_no_alembic_info(fresh_database_url):
    first = flask_db_upgrade(fresh_database_url)  # creates the database, runs every revision
    again = flask_db_upgrade(fresh_database_url)  # nothing to do

    for result in (first, again):
        assert result.returncode == 0, result.stdout + result.stderr
        assert "INFO" not in result.stdout + result.stderr, result.stdout + result.stderr
    assert first.stdout == "database created, database at the latest revision\n", first.stdout + first.stderr
    assert again.stdout == "database at the latest revision\n", again.stdout + again.stderr


def test_flask_db_upgrade_names_an_unreachable_server_in_one_line():
    result = flask_db_upgrade("postgresql+psycopg2://postgres@127.0.0.1:1/nowhere")

    assert result.returncode == 1
    assert result.stderr.startswith("Error: PostgreSQL: connection to server at"), result.stderr
    assert "Traceback" not in result.stderr


def test_flask_db_create_names_an_unreachable_server_in_one_line_too():
    result = flask_db_upgrade("postgresql+psycopg2://postgres@127.0.0.1:1/nowhere", command="create")

    assert result.returncode == 1
    assert result.stderr.startswith("Error: PostgreSQL: connection to server at"), result.stderr
    assert "Traceback" not in result.stderr
