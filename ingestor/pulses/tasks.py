"""The Celery tasks of the pulses domain: thin wrappers around plain functions.

Task names are part of the producers' contract and never change:
`ingestor.ingest_pulses`, `ingestor.ingest_pulse`, `ingestor.persist_pulses`.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg2
import redis.exceptions
import sqlalchemy.exc
from celery import Task, shared_task
from celery.exceptions import Reject

from ingestor.database import get_database
from ingestor.messaging.serialization import ExactJsonRequest
from ingestor.observability import metrics
from ingestor.pulses import get_pulses
from ingestor.pulses.ingest import IngestReport, ingest_batch
from ingestor.pulses.persistence import LOCK_TIMEOUT_SECONDS
from ingestor.pulses.populate import run_share
from ingestor.pulses.publishing import BrokerUnavailable
from ingestor.redis_store import get_redis

# Worth retrying: the service may be back in a moment. Every step being idempotent,
# a retry can never count twice. Anything else is a bug or bad input, and goes to
# the dead-letter queue instead of being retried forever.
TRANSIENT_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    # The same from psycopg2 itself: the flush's COPY runs on the driver's cursor,
    # outside SQLAlchemy (a canceled statement, a deadlock, a dropped connection).
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
    BrokerUnavailable,
)
# max_retries and retry_backoff_max come from the settings (see celery_config).
RETRY_POLICY: dict[str, Any] = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": True,
    "retry_jitter": True,
}


def _ingest(task: Task, pulses: list[Any]) -> dict[str, int]:
    services = get_pulses()
    started = time.perf_counter()
    report: IngestReport = ingest_batch(
        pulses,
        message_id=task.request.id,
        source=task.name,
        validator=services.validator,
        counter=services.counter,
        database=get_database(),
    )
    metrics.record_ingest("task", report.counted, report.duplicates, time.perf_counter() - started)
    return report.__dict__


# The pulse tasks decode their messages with Decimal amounts (see messaging/serialization).
@shared_task(name="ingestor.ingest_pulses", bind=True, Request=ExactJsonRequest, **RETRY_POLICY)
def ingest_pulses(self: Task, pulses: list[dict[str, Any]]) -> dict[str, int]:
    """Count a batch of pulses; invalid ones go to the rejected-pulses table."""
    if not isinstance(pulses, list):
        # Not a batch at all: nothing in it can be counted or quarantined pulse by
        # pulse, so the whole message goes to the dead-letter queue.
        raise Reject(f"ingest_pulses expects a list of pulses, got {type(pulses).__name__}", requeue=False)
    return _ingest(self, pulses)


@shared_task(name="ingestor.ingest_pulse", bind=True, Request=ExactJsonRequest, **RETRY_POLICY)
def ingest_pulse(self: Task, pulse: dict[str, Any]) -> dict[str, int]:
    """Count one pulse (the first version's one-pulse-per-message model)."""
    return _ingest(self, [pulse])


@shared_task(name="ingestor.persist_pulses", **RETRY_POLICY)
def persist_pulses() -> dict[str, Any]:
    """Flush the Redis hour windows into PostgreSQL (fired hourly by beat)."""
    # Wait out another run's lock rather than skip: when that run was killed, this
    # may be its own task, redelivered, and the only run before the next beat to
    # finish the snapshot it left. A live run finishes or renews within the timeout.
    started = time.perf_counter()
    try:
        report = get_pulses().persister.persist_pending(wait_seconds=LOCK_TIMEOUT_SECONDS + 15)
    except Exception:
        metrics.record_persist_failure(time.perf_counter() - started)
        raise
    metrics.record_persist(report, time.perf_counter() - started, finished_at=time.time())
    return report.__dict__


@shared_task(name="ingestor.populate_pulses", bind=True, **RETRY_POLICY)
def populate_pulses(self: Task, job_id: str, worker_index: int, count: int, buffer_size: int) -> int:
    """Publish one share of a populate job as fake pulse batches (see populate.py)."""
    return run_share(self.app, get_redis(), job_id, worker_index, count, buffer_size)
