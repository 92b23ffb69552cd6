"""The contracts others rely on: the README's producer snippet, the operator's flush,
and a schema that matches the models."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from alembic import command

from ingestor.database import alembic_config
from ingestor.pulses import keys
from ingestor.pulses.aggregation import CountablePulse
from tests.support.ledger import persisted_sums
from tests.support.worker import wait_until_idle

pytestmark = pytest.mark.usefixtures("clean_state")

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_producer_snippet() -> str:
    match = re.search(r"<!-- producer-snippet -->\n```python\n(.*?)```", README.read_text(), re.S)
    assert match, "the README lost its producer snippet"
    return match.group(1)


def test_the_readme_producer_snippet_reaches_the_sums(producer, worker, settings, database):
    # Run as another service would: a fresh interpreter that only has Celery.
    script = readme_producer_snippet() + "\nimport sys\nassert 'ingestor' not in sys.modules\n"
    subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "BROKER_URL": settings.broker_url},
        check=True,
        timeout=60,
    )
    wait_until_idle(producer, worker, ("pulses",))
    producer.send_task("ingestor.persist_pulses", exchange="persist", routing_key="persist")
    wait_until_idle(producer, worker, ("pulses", "persist"))

    per_group: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    for (tenant, sku, unit, _), (amount, _) in persisted_sums(database).items():
        per_group[(tenant, sku, unit)] += amount
    assert per_group == {
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
