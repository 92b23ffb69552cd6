"""`flask pulses ...`: operator commands of the pulses domain."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from ingestor.commands import CommandGroup
from ingestor.pulses import get_pulses

pulses_cli = CommandGroup("pulses", help="Operate on the pulses pipeline.")


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


@pulses_cli.command("stats")
def stats() -> None:
    """What waits in Redis for the next flush, the last flush, the rejected pulses."""
    from ingestor.database import get_database
    from ingestor.pulses import keys
    from ingestor.pulses.stats import pending_groups, pending_windows, persisted_stats
    from ingestor.redis_store import get_redis

    redis = get_redis()
    pending = pending_windows(redis)
    persisted = persisted_stats(get_database())
    oldest = pending.oldest_hour
    age = f" ({pending.oldest_age_seconds(datetime.now(UTC)) / 3600:.1f} h ago)" if oldest else ""
    click.echo(f"pending windows:     {len(pending.windows) + len(pending.legacy_windows)}")
    click.echo(f"pending snapshots:   {len(pending.snapshots) + len(pending.legacy_snapshots)}")
    click.echo(f"pending groups:      {pending_groups(redis, pending.hash_keys())}")
    click.echo(f"oldest pending hour: {oldest.isoformat() if oldest else '-'}{age}")
    click.echo(f"snapshots in grace:  {pending.in_grace} (persisted, readable until their grace ends)")
    if pending.corrupt:
        click.echo(f"corrupt snapshots:   {pending.corrupt} (set aside, see {keys.CORRUPT_SNAPSHOTS})")
    if pending.legacy_windows or pending.legacy_snapshots:
        click.echo("previous layout:     keys still to drain; the next flush persists them")
    last = persisted.last_flush_at
    click.echo(
        f"last persist:        {last.isoformat() if last else 'never'} ({persisted.flush_batches} batch(es))"
    )
    click.echo(f"rejected pulses:     {persisted.rejected_pulses}")


@pulses_cli.command("populate")
@click.option(
    "--total", default=10_000, show_default=True, type=click.IntRange(1), help="Fake pulses to publish."
)
@click.option(
    "--batch", default=500, show_default=True, type=click.IntRange(1, 10_000), help="Pulses per message."
)
def populate(total: int, batch: int) -> None:
    """Publish fake pulses to the pulses queue from here, with a progress bar (demo, load)."""
    import time
    import uuid

    from flask import current_app

    from ingestor.pulses.populate import publish_fake_pulses
    from ingestor.pulses.publishing import BrokerUnavailable

    celery_app = current_app.extensions["celery"]
    job_id = f"cli-{uuid.uuid4()}"
    started = time.monotonic()
    with click.progressbar(length=total, label="publishing", show_pos=True) as bar:

        def advance(published: int) -> None:
            bar.update(published - bar.pos)

        try:
            publish_fake_pulses(celery_app, job_id, 0, total, batch, advance)
        except BrokerUnavailable as exc:
            raise click.ClickException(f"{exc}; {bar.pos} of {total} pulses were published") from None
    elapsed = max(time.monotonic() - started, 1e-9)
    click.echo(
        f"published {total} pulses in {-(-total // batch)} message(s) in {elapsed:.2f}s "
        f"({total / elapsed:,.0f} pulses/s)"
    )


def _aware(value: datetime | None) -> datetime | None:
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


@pulses_cli.command("replay-rejected")
@click.option(
    "--reason", help="Only pulses rejected on this field (used_amount) or for this reason (fraction_digits)."
)
@click.option("--tenant", help="Only this tenant's pulses.")
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]),
    help="Only pulses rejected at or after this time (UTC without an offset).",
)
@click.option("--limit", type=click.IntRange(1), help="At most this many rows.")
@click.option(
    "--round-half-even",
    "round_amounts",
    is_flag=True,
    help="Round amounts with more than 6 fractional digits to 6 (half to even) and count them.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be counted; change nothing.")
def replay_rejected(
    reason: str | None,
    tenant: str | None,
    since: datetime | None,
    limit: int | None,
    round_amounts: bool,
    dry_run: bool,
) -> None:
    """Count quarantined pulses that are valid now (or once rounded); each row at most once."""
    from ingestor.database import get_database
    from ingestor.pulses.replay_rejected import ReplayFilter
    from ingestor.pulses.replay_rejected import replay_rejected as replay

    services = get_pulses()
    selection = ReplayFilter(reason=reason, tenant=tenant, since=_aware(since), limit=limit)
    report = replay(
        get_database(),
        services.validator,
        services.counter,
        selection,
        round_amounts=round_amounts,
        dry_run=dry_run,
    )
    verb = "would count" if dry_run else "counted"
    click.echo(
        f"{verb} {report.counted} pulse(s) ({report.rounded} rounded), {report.duplicates} already counted; "
        f"left in rejected_pulse: {report.still_invalid} still invalid, {report.unreadable} unreadable (cut)"
    )


@pulses_cli.command("replay-dead-letters")
@click.option("--limit", type=click.IntRange(1), help="At most this many messages (default: all there now).")
def replay_dead_letters(limit: int | None) -> None:
    """Move messages from pulses.dead back to the queue they were dead-lettered from."""
    from ingestor.messaging.dead_letters import replay_dead_letters as replay
    from ingestor.settings import get_settings

    report = replay(get_settings().broker_url, limit)
    for queue, count in sorted(report.replayed.items()):
        click.echo(f"replayed {count} message(s) to {queue}")
    click.echo(
        f"replayed {sum(report.replayed.values())} in all; {report.left} without origin left in pulses.dead"
    )
