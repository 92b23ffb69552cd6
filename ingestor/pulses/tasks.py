"""The Celery tasks of the pulses domain: thin wrappers around plain functions.

Task names are part of the producers' contract and never change (`task_names`).
Each task body does its work and returns what happened; the task base class of the
wiring (`ingestor.celery_app.FlaskTask`) times and counts every run, and hands the
outcome to the task's `record_run` below, which turns it into the domain's metrics.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis.exceptions
from celery import Task, shared_task
from celery.exceptions import Reject, Retry

from ingestor.database import get_database
from ingestor.messaging.serialization import ExactJsonRequest
from ingestor.observability import metrics
from ingestor.observability.redis_memory import get_memory_watch
from ingestor.outages import TRANSIENT_ERRORS
from ingestor.pulses import get_pulses, task_names
from ingestor.pulses.ingest import IngestReport, ingest_batch
from ingestor.pulses.persistence import LOCK_TIMEOUT_SECONDS
from ingestor.pulses.populate import run_share
from ingestor.redis_store import get_redis, is_out_of_memory, wait_for_room
from ingestor.settings import get_settings

# Worth retrying (ingestor.outages): the service may be back in a moment, or Redis
# was full (held first: see hold_for_memory). Anything else is a bug or bad input,
# and goes to the dead-letter queue instead of being retried forever.
# max_retries and retry_backoff_max come from the settings (see celery_config).
RETRY_POLICY: dict[str, Any] = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": True,
    "retry_jitter": True,
}

# A full Redis is a capacity incident, not a blip: it lasts until an operator adds
# memory (or dedupe keys expire), far longer than TASK_MAX_RETRIES were meant to
# cover. A task refused for memory is therefore held and retried without spending
# that budget (see hold_for_memory): it waits 1 s, 2 s, 4 s... up to this (or
# TASK_RETRY_BACKOFF_MAX_SECONDS, when lower), less as soon as Redis has room.
# Short, because the wait is inside the task: a warm shutdown waits for it.
MEMORY_HOLD_MAX_SECONDS = 5
# How often a held task reads INFO memory to see whether Redis has room again.
MEMORY_POLL_SECONDS = 0.5
# How many times Redis refused this task for memory so far, carried by its retries.
MEMORY_REFUSALS_HEADER = "ingestor_memory_refusals"


def memory_hold_seconds(refusals: int, cap: float) -> float:
    """How long a task refused `refusals` times waits for room: 1, 2, 4... up to `cap`, jittered."""
    delay = min(float(2 ** min(refusals - 1, 30)), cap)
    return random.uniform(delay / 2, delay)  # refused batches do not all come back at once


def hold_for_memory(task: Task, exc: Exception) -> Retry:
    """Hold `task`'s message until Redis has room (or a short while), then retry it.

    The delivery stays unacked while the task waits (late acks), polling INFO memory,
    then it is retried by Celery's own mechanism, at once: the same message (same
    task id, so the same dedupe keys) is published again to the back of its queue,
    confirmed by RabbitMQ, and only then is this delivery acked. What differs from an
    ordinary retry is the count, left as it was: TASK_MAX_RETRIES still counts only
    outages, so a batch never reaches the dead-letter queue because Redis was full.

    Why wait here and not with a countdown: a countdown copy is held in the worker's
    memory until its time comes, and in a long incident every message of the queue
    would end up there. Held this way, the backlog stays in RabbitMQ and the worker
    holds no more than its prefetch; each wait is short, so the persist task (on the
    same pool) gets its turn and a warm shutdown finishes within MEMORY_HOLD_MAX_SECONDS.
    """
    request = task.request
    refusals = int(request.get(MEMORY_REFUSALS_HEADER) or 0) + 1
    cap = min(MEMORY_HOLD_MAX_SECONDS, get_settings().task_retry_backoff_max_seconds)
    hold = memory_hold_seconds(refusals, cap)
    get_memory_watch().refused(
        task.name,
        exc,
        held=f"task {request.id} held unacked (refusal {refusals}, retries left unspent)",
        retry_in=hold,
    )
    wait_for_room(get_redis(), hold, MEMORY_POLL_SECONDS)
    # The headers Celery's retry would carry on (x-death left out), plus our count.
    headers = {**request.as_execution_options()["headers"], MEMORY_REFUSALS_HEADER: refusals}
    retry = task.signature_from_request(request, retries=request.retries, headers=headers)
    try:
        retry.apply_async()
    except Exception as publish_error:  # the broker refused the copy
        # Not acked, not dead-lettered: back to the queue, to be refused or counted again.
        raise Reject(publish_error, requeue=True) from exc
    return Retry(exc=exc, when=0, sig=retry)


@contextmanager
def patient_with_memory(task: Task) -> Iterator[None]:
    """Inside a task: Redis refusing a write for memory becomes `hold_for_memory`."""
    try:
        yield
    except redis.exceptions.ResponseError as exc:
        if not is_out_of_memory(exc):
            raise
        raise hold_for_memory(task, exc) from exc


def _ingest(task: Task, pulses: list[Any]) -> dict[str, int]:
    services = get_pulses()
    get_memory_watch().check()  # a clock reading; INFO memory every few seconds at most
    with patient_with_memory(task):
        report: IngestReport = ingest_batch(
            pulses,
            message_id=task.request.id,
            source=task.name,
            validator=services.validator,
            counter=services.counter,
            database=get_database(),
        )
    # Once the rejections are stored (a redelivered message counts again here, though
    # not in the table: metrics are a rate, the table is the record).
    metrics.record_rejections("task", report.rejection_reasons)
    return report.counts()


def _record_ingest(task: Task, outcome: str, result: Any, seconds: float) -> None:
    if outcome == metrics.TASK_SUCCESS:
        metrics.record_ingest("task", result["counted"], result["duplicates"], seconds)


def _record_persist(task: Task, outcome: str, result: Any, seconds: float) -> None:
    if outcome != metrics.TASK_SUCCESS:
        # Retried (its snapshots wait in Redis), or failed for good.
        metrics.record_persist_failure(seconds)
        return
    metrics.record_persist(
        skipped=result["skipped"],
        rows=result["groups"],
        pulses=result["pulses"],
        seconds=seconds,
        finished_at=time.time(),
    )


# The pulse tasks decode their messages with Decimal amounts (see messaging/serialization).
@shared_task(
    name=task_names.INGEST_PULSES,
    bind=True,
    Request=ExactJsonRequest,
    record_run=_record_ingest,
    **RETRY_POLICY,
)
def ingest_pulses(self: Task, pulses: list[dict[str, Any]]) -> dict[str, int]:
    """Count a batch of pulses; invalid ones go to the rejected-pulses table."""
    if not isinstance(pulses, list):
        # Not a batch at all: nothing in it can be counted or quarantined pulse by
        # pulse, so the whole message goes to the dead-letter queue.
        raise Reject(f"ingest_pulses expects a list of pulses, got {type(pulses).__name__}", requeue=False)
    return _ingest(self, pulses)


@shared_task(
    name=task_names.INGEST_PULSE,
    bind=True,
    Request=ExactJsonRequest,
    record_run=_record_ingest,
    **RETRY_POLICY,
)
def ingest_pulse(self: Task, pulse: dict[str, Any]) -> dict[str, int]:
    """Count one pulse (the first version's one-pulse-per-message model)."""
    return _ingest(self, [pulse])


@shared_task(name=task_names.PERSIST_PULSES, bind=True, record_run=_record_persist, **RETRY_POLICY)
def persist_pulses(self: Task) -> dict[str, Any]:
    """Flush the Redis hour windows into PostgreSQL (fired hourly by beat)."""
    # Wait out another run's lock rather than skip: when that run was killed, this
    # may be its own task, redelivered, and the only run before the next beat to
    # finish the snapshot it left. A live run finishes or renews within the timeout.
    # A full Redis refuses the lock itself (SET NX), or a later write: each step is
    # idempotent, so the flush waits for memory like a batch does (every snapshot
    # taken stays in Redis, and the next run finishes it).
    with patient_with_memory(self):
        report = get_pulses().persister.persist_pending(wait_seconds=LOCK_TIMEOUT_SECONDS + 15)
    return report.__dict__


@shared_task(name=task_names.POPULATE_PULSES, bind=True, **RETRY_POLICY)
def populate_pulses(self: Task, job_id: str, worker_index: int, count: int, buffer_size: int) -> int:
    """Publish one share of a populate job as fake pulse batches (see populate.py)."""
    return run_share(self.app, get_redis(), job_id, worker_index, count, buffer_size)
