"""The pulses domain: validating, counting and persisting usage pulses.

`init_app` builds the domain's services once per app; tasks and commands get them
with `get_pulses()`.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from ingestor.observability import metrics
from ingestor.pulses import keys
from ingestor.pulses.aggregation import PulseCounter
from ingestor.pulses.ingest import PulseValidator
from ingestor.pulses.persistence import Persister
from ingestor.pulses.queries import TotalCache
from ingestor.pulses.stats import PendingWindowsCollector
from ingestor.redis_store import is_cluster
from ingestor.settings import settings_of


@dataclass(frozen=True)
class PulseServices:
    """The objects that do the domain's work, built from the app's settings."""

    validator: PulseValidator
    counter: PulseCounter
    persister: Persister
    totals: TotalCache


def init_app(app: Flask) -> None:
    """Build the pulses services of `app` (after its database and Redis)."""
    settings = settings_of(app)
    redis = app.extensions["redis"]
    # On a cluster, the windows spread over many hash tags (one slot each); the tag
    # count is the process's, read when a pulse is validated (keys.tag_of_record).
    keys.use_shard_tags(keys.CLUSTER_SHARD_TAG_COUNT if is_cluster(redis) else keys.SHARD_TAG_COUNT)
    app.extensions["pulses"] = PulseServices(
        validator=PulseValidator(settings),
        counter=PulseCounter(
            redis,
            settings.dedupe_horizon_seconds,
            settings.redis_chunk_size,
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout_ms=settings.redis_wait_timeout_ms,
        ),
        persister=Persister(
            redis, app.extensions["database"], grace_seconds=settings.pending_read_grace_seconds
        ),
        totals=TotalCache(redis),
    )
    # What waits in Redis for the next flush, read at every scrape.
    metrics.add_scrape_collector(app, PendingWindowsCollector)
    from ingestor.pulses.cli import pulses_cli

    app.cli.add_command(pulses_cli)


def get_pulses() -> PulseServices:
    """The pulses services of the current app."""
    return current_app.extensions["pulses"]
