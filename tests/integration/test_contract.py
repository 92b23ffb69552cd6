"""The contracts others rely on: the README's producer snippet, the operator's flush,
and a schema that matches the models."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest
from alembic import command

from ingestor.database import alembic_config
from ingestor.pulses import keys
from ingestor.pulses.aggregation import CountablePulse
from tests.support.ledger import persisted_sums, persisted_sums_per_group
from tests.support.readme import readme_snippet, run_snippet
from tests.support.worker import wait_until_idle

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


def test_flask_pulses_flush_persists_now(app, database):
    hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    app.extensions["pulses"].counter.count(
        [CountablePulse(keys.dedupe_key_for_id("ops", "1"), keys.window_key(keys.hour_of(hour)),
                        keys.group_field("ops", "cli", "run"), 1_500_000)]  # fmt: skip
    )

    result = app.test_cli_runner().invoke(args=["pulses", "flush"])

    assert result.exit_code == 0, result.output
    assert "1 snapshot(s): 1 group(s), 1 pulse(s)" in result.output
    assert persisted_sums(database) == {("ops", "cli", "run", hour): (Decimal("1.5"), 1)}


def test_the_migrations_build_exactly_the_models(settings):
    # Raises if `alembic revision --autogenerate` would find anything to do.
    command.check(alembic_config(settings.database_url))
