"""`flask pulses ...`: operator commands of the pulses domain."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from ingestor.pulses import get_pulses

pulses_cli = AppGroup("pulses", help="Operate on the pulses pipeline.")


@pulses_cli.command("flush")
@click.option("--wait", default=300, show_default=True, help="Seconds to wait for a running flush to finish.")
def flush(wait: int) -> None:
    """Persist every pending Redis window to PostgreSQL now."""
    report = get_pulses().persister.persist_pending(wait_seconds=wait)
    if report.skipped:
        raise click.ClickException(f"another flush still holds the lock after {wait}s; try again later")
    click.echo(
        f"persisted {report.snapshots} snapshot(s): {report.groups} group(s), {report.pulses} pulse(s)"
        + (f"; {report.already_persisted} already persisted before" if report.already_persisted else "")
    )
