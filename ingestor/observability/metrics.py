"""Prometheus metrics: counted per batch, exposed by the web and by the worker.

Why prometheus-client's multiprocess mode: gunicorn runs several web workers, and the
Celery worker runs its tasks in prefork pool processes while the raw queue is
consumed in its main process. Each process counts in its own memory-mapped file under
`PROMETHEUS_MULTIPROC_DIR`; a scrape sums the files, so counters survive a pool
process being replaced and nothing depends on which process a scrape reaches.

- The web: `gunicorn_config.py` gives each gunicorn master a fresh directory before
  it forks its workers; `GET /metrics` (see `ingestor/api/metrics.py`) sums them.
- The worker: at `worker_init` (main process, before the pool forks) it gets a fresh
  directory too, and, when `METRICS_PORT` is set, its main process serves the sum on
  `METRICS_HOST:METRICS_PORT`. One scrape target per worker machine.
- `flask run`, beat, the CLI: no directory, prometheus-client's ordinary registry.

prometheus-client decides the mode when it is first imported, so nothing imports it
at module level: `instruments()` builds the metrics on first use, after the
directory is in place. Callers record once per batch or request; an update is a few
memory-mapped writes, never a network call.

The Redis gauges (pending windows and snapshots, age of the oldest pending hour, memory
against maxmemory) are not counted anywhere: collectors read them from Redis at scrape
time, on the web and on the worker alike, so they are right whoever scrapes. This
module knows no domain: `RedisMemoryCollector` is its own, and a domain adds the
collectors of its state with `add_scrape_collector` (the pulses domain adds its
pending windows, see `ingestor.pulses.stats`).

The metrics are recorded at the edges (the task base class of `ingestor.celery_app`,
the raw consumer step, the API views) from what the domain returns.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from celery.signals import worker_init
from flask import Flask
from redis import Redis
from redis.exceptions import RedisError

from ingestor.redis_store import read_memory
from ingestor.settings import settings_of

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The fields of a pulse (DESIGN.md): a rejection's reason is labelled with its field,
# anything else (a pulse that is not an object: marshmallow's `_schema`) as "pulse".
# A fixed set, so a hostile producer cannot create label values at will.
PULSE_FIELDS = frozenset({"id", "tenant", "product_sku", "use_unity", "used_amount", "timestamp"})
PERSIST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
BATCH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# How a task run ended (the `outcome` label of ingestor_tasks_total).
TASK_SUCCESS = "success"
TASK_RETRY = "retry"
TASK_FAILURE = "failure"
# The app extension holding the scrape-time collectors domains added.
COLLECTORS_EXTENSION = "metrics_collectors"

# A scrape-time collector, made from the app's Redis client: an object whose
# `collect()` yields prometheus metric families.
CollectorFactory = Callable[[Redis], Any]


@dataclass(frozen=True)
class Instruments:
    """The ingestor's metrics (built once per process by `instruments()`)."""

    accepted: Any
    deduplicated: Any
    rejected: Any
    dead_lettered: Any
    batch_seconds: Any
    http_enqueued: Any
    persist_runs: Any
    persist_rows: Any
    persist_pulses: Any
    persist_seconds: Any
    persist_last_success: Any
    request_seconds: Any
    requests: Any
    memory_refusals: Any
    task_runs: Any
    task_seconds: Any


@cache
def instruments() -> Instruments:
    """The metrics of this process, created on first use (see the module docstring)."""
    from prometheus_client import Counter, Gauge, Histogram

    return Instruments(
        accepted=Counter(
            "ingestor_pulses_accepted", "Valid pulses counted into the Redis hour windows", ["source"]
        ),
        deduplicated=Counter(
            "ingestor_pulses_deduplicated",
            "Valid pulses not counted again: their dedupe key was seen",
            ["source"],
        ),
        rejected=Counter(
            "ingestor_pulses_rejected",
            "Invalid pulses, by the field that failed validation and why",
            ["source", "field", "reason"],
        ),
        dead_lettered=Counter(
            "ingestor_messages_dead_lettered",
            "Messages the ingestor published to pulses.dead itself, by kind of reason",
            ["source", "reason"],
        ),
        batch_seconds=Histogram(
            "ingestor_batch_duration_seconds",
            "Time to count one batch of pulses",
            ["source"],
            buckets=BATCH_BUCKETS,
        ),
        http_enqueued=Counter("ingestor_http_pulses_enqueued", "Valid pulses POST /api/v1/pulses enqueued"),
        persist_runs=Counter("ingestor_persist_runs", "Persist (flush) runs, by outcome", ["outcome"]),
        persist_rows=Counter("ingestor_persist_rows", "Hourly sums (rows) added to PostgreSQL"),
        persist_pulses=Counter("ingestor_persist_pulses", "Pulses whose sums were persisted"),
        persist_seconds=Histogram(
            "ingestor_persist_duration_seconds", "Duration of a persist run", buckets=PERSIST_BUCKETS
        ),
        persist_last_success=Gauge(
            "ingestor_persist_last_success_timestamp_seconds",
            "When a persist run last finished without error (Unix time)",
            multiprocess_mode="max",
        ),
        request_seconds=Histogram(
            "ingestor_http_request_duration_seconds", "API latency", ["method", "route"]
        ),
        requests=Counter("ingestor_http_requests", "API responses", ["method", "route", "status"]),
        memory_refusals=Counter(
            "ingestor_redis_memory_refusals",
            "Batches (and flushes) Redis refused for memory, held and retried",
            ["source"],
        ),
        task_runs=Counter("ingestor_tasks", "Celery task runs, by task and outcome", ["task", "outcome"]),
        task_seconds=Histogram(
            "ingestor_task_duration_seconds",
            "Duration of a Celery task run",
            ["task"],
            buckets=PERSIST_BUCKETS,
        ),
    )


def _field_of(reason: str) -> str:
    return reason if reason in PULSE_FIELDS else "pulse"


def rejected_fields(reasons: Iterable[Iterable[tuple[str, str]]]) -> Tally[tuple[str, str]]:
    """How many rejected pulses failed on each (field, reason code).

    `reasons` holds each rejected pulse's (field, reason code) pairs; a pulse counts
    once per pair. The codes come from a fixed set (the pulses schema's).
    """
    return Tally((_field_of(field), code) for pairs in reasons for field, code in set(pairs))


def record_ingest(source: str, counted: int, duplicates: int, seconds: float) -> None:
    """One batch counted into Redis: `source` is "task" or "raw"."""
    metrics = instruments()
    if counted:
        metrics.accepted.labels(source).inc(counted)
    if duplicates:
        metrics.deduplicated.labels(source).inc(duplicates)
    metrics.batch_seconds.labels(source).observe(seconds)


def record_rejections(source: str, reasons: Iterable[Iterable[tuple[str, str]]]) -> None:
    """The rejections of one batch, by field and reason: see `rejected_fields`."""
    tally = rejected_fields(reasons)
    if tally:
        metrics = instruments()
        for (field, code), count in tally.items():
            metrics.rejected.labels(source, field, code).inc(count)


def record_dead_letter(source: str, reason: str) -> None:
    """One message published to pulses.dead and confirmed; `reason` is a fixed-set kind."""
    instruments().dead_lettered.labels(source, reason).inc()


def record_http_pulses(enqueued: int, reasons: Iterable[Iterable[tuple[str, str]]]) -> None:
    """One POST /api/v1/pulses: valid pulses enqueued, invalid ones by field and reason."""
    if enqueued:
        instruments().http_enqueued.inc(enqueued)
    record_rejections("http", reasons)


def record_task(task: str, outcome: str, seconds: float) -> None:
    """One Celery task run: `outcome` is TASK_SUCCESS, TASK_RETRY or TASK_FAILURE."""
    metrics = instruments()
    metrics.task_runs.labels(task, outcome).inc()
    metrics.task_seconds.labels(task).observe(seconds)


def record_persist(*, skipped: bool, rows: int, pulses: int, seconds: float, finished_at: float) -> None:
    """One persist run that finished: skipped (another run held the lock), or `rows` sums of `pulses` added."""
    metrics = instruments()
    metrics.persist_runs.labels("skipped" if skipped else "persisted").inc()
    if skipped:
        return
    metrics.persist_rows.inc(rows)
    metrics.persist_pulses.inc(pulses)
    metrics.persist_seconds.observe(seconds)
    metrics.persist_last_success.set(finished_at)


def record_persist_failure(seconds: float) -> None:
    """One persist run that raised (it is retried; its snapshots wait in Redis)."""
    metrics = instruments()
    metrics.persist_runs.labels("failed").inc()
    metrics.persist_seconds.observe(seconds)


def record_memory_refusal(source: str) -> None:
    """One batch (task name, "raw") or flush Redis refused because it reached maxmemory."""
    instruments().memory_refusals.labels(source).inc()


def record_request(method: str, route: str, status: int, seconds: float) -> None:
    """One API response."""
    metrics = instruments()
    metrics.request_seconds.labels(method, route).observe(seconds)
    metrics.requests.labels(method, route, str(status)).inc()


class RedisMemoryCollector:
    """Gauges read from Redis at scrape time: its memory against maxmemory (INFO memory)."""

    def __init__(self, redis: Redis, warn_percent: int) -> None:
        self._redis = redis
        self._warn_ratio = warn_percent / 100

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        try:
            usage = read_memory(self._redis)
        except RedisError:
            return  # ingestor_redis_up says so
        yield GaugeMetricFamily(
            "ingestor_redis_used_memory_bytes",
            "Redis memory as compared with maxmemory (used_memory less replica/AOF buffers)",
            value=usage.used_bytes,
        )
        yield GaugeMetricFamily(
            "ingestor_redis_maxmemory_bytes", "Redis maxmemory (0: no limit)", value=usage.maxmemory_bytes
        )
        if usage.used_ratio is None:
            return
        yield GaugeMetricFamily(
            "ingestor_redis_memory_headroom_ratio",
            "Share of maxmemory still free (0 or less: Redis refuses writes)",
            value=1 - usage.used_ratio,
        )
        yield GaugeMetricFamily(
            "ingestor_redis_memory_low",
            "1 when Redis memory is at or above REDIS_MEMORY_WARN_PERCENT of maxmemory",
            value=int(usage.used_ratio >= self._warn_ratio),
        )


class _ProcessMetrics:
    """This process's own registry, for a process not in multiprocess mode."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client import REGISTRY

        yield from REGISTRY.collect()


def add_scrape_collector(app: Flask, factory: CollectorFactory) -> None:
    """Have `app`'s metrics registries read `factory(redis)` at every scrape."""
    app.extensions.setdefault(COLLECTORS_EXTENSION, []).append(factory)


def registry_of(app: Flask) -> Any:
    """`build_registry` for `app`: its Redis, its settings, the collectors added to it."""
    return build_registry(
        app.extensions["redis"],
        settings_of(app).redis_memory_warn_percent,
        app.extensions.get(COLLECTORS_EXTENSION, ()),
    )


def build_registry(
    redis: Redis, memory_warn_percent: int, collectors: Iterable[CollectorFactory] = ()
) -> Any:
    """A registry with every process's metrics (or this process's), the Redis gauges and `collectors`."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client.multiprocess import MultiProcessCollector

        MultiProcessCollector(registry)
    else:
        registry.register(_ProcessMetrics())
    for factory in collectors:
        registry.register(factory(redis))
    registry.register(RedisMemoryCollector(redis, memory_warn_percent))
    return registry


def prepare_multiprocess_dir(role: str) -> str:
    """Point PROMETHEUS_MULTIPROC_DIR at a fresh directory for this process and its children.

    Must run before any metric is built and before the process forks. A
    directory of its own, inside PROMETHEUS_MULTIPROC_DIR when the operator set one
    (e.g. a tmpfs): files left by an earlier run or by another process group would be
    summed into ours. Removed when the process that made it exits.
    """
    path = tempfile.mkdtemp(prefix=f"ingestor-{role}-metrics-", dir=os.environ.get(MULTIPROC_ENV) or None)
    os.environ[MULTIPROC_ENV] = path
    if "prometheus_client.values" in sys.modules:
        from prometheus_client import values

        # Imported already, by someone else: the `celery` command loads every installed
        # plugin at start-up, and Flower's imports prometheus-client, before the worker
        # gets here. Its value class was chosen then (in-process); choose it again, so
        # the metrics built after this point write to the directory.
        values.ValueClass = values.get_value_class()
    owner = os.getpid()

    def _remove() -> None:
        if os.getpid() == owner:  # a forked child inherits atexit handlers
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(_remove)
    return path


def start_metrics_server(host: str, port: int, registry: Any) -> Any:
    """Serve `registry` over HTTP from this process; None (logged) if the port is taken."""
    from prometheus_client import start_http_server

    try:
        server, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        # Two workers on one machine: the second one's metrics are still counted, in
        # its own directory, but need another METRICS_PORT to be scraped.
        logger.warning(
            "metrics endpoint not started on %s:%d: %s",
            host,
            port,
            exc,
            extra={"metrics_host": host, "metrics_port": port},
        )
        return None
    logger.info(
        "metrics served on http://%s:%d/metrics",
        host,
        port,
        extra={"metrics_host": host, "metrics_port": port},
    )
    return server


def connect_worker_signals(app: Flask) -> None:
    """In a Celery worker: a metrics directory for its processes, and the endpoint."""
    settings = settings_of(app)

    def _on_worker_init(**_: object) -> None:
        prepare_multiprocess_dir("worker")
        if settings.metrics_port:
            start_metrics_server(settings.metrics_host, settings.metrics_port, registry_of(app))

    worker_init.connect(_on_worker_init, weak=False, dispatch_uid="ingestor-worker-metrics")
