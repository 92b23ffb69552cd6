"""Redis running out of memory, said loudly: a warning before, an error during.

A full Redis (maxmemory reached, `noeviction`) is a capacity incident, not a blip:
dedupe keys live a whole horizon, so it does not pass by itself. Nothing is lost
while it lasts (the ingest tasks and the raw consumer hold their batches and retry
until Redis has room), but it must not go unnoticed:

- `MemoryWatch.check()` runs on every batch and costs a clock reading: at most every
  REDIS_MEMORY_CHECK_SECONDS it reads INFO memory and logs a WARNING while used
  memory is at or above REDIS_MEMORY_WARN_PERCENT of maxmemory, before refusals start;
- `MemoryWatch.refused()` logs the ERROR line of a batch Redis refused, with the
  figures and what to do, and counts it (`ingestor_redis_memory_refusals_total`).

The scrape-time gauges (metrics.RedisMemoryCollector) and `/ready` read the same
figures through `redis_store.read_memory`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from flask import Flask, current_app
from redis import Redis
from redis.exceptions import RedisError

from ingestor.observability import metrics
from ingestor.redis_store import MemoryUsage, read_memory
from ingestor.settings import settings_of

logger = logging.getLogger(__name__)

WHAT_TO_DO = (
    "add memory (maxmemory), shorten DEDUPE_HORIZON_SECONDS or shard Redis; see README, Operate > Redis full"
)


class MemoryWatch:
    """Rate-limited reads of Redis memory, and the log lines of a Redis filling up."""

    def __init__(
        self,
        redis: Redis,
        warn_percent: int,
        interval_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._warn_ratio = warn_percent / 100
        self._interval = interval_seconds
        self._clock = clock
        self._checked_at: float | None = None
        self._usage: MemoryUsage | None = None

    def _refresh_if_due(self) -> bool:
        """Read INFO memory if the last reading is older than the interval; True if read."""
        now = self._clock()
        if self._checked_at is not None and now - self._checked_at < self._interval:
            return False
        self._checked_at = now
        try:
            self._usage = read_memory(self._redis)
        except RedisError:
            # Unreachable: the outage is reported where it is met, not here.
            self._usage = None
        return True

    def usage(self) -> MemoryUsage | None:
        """The last reading, refreshed when older than the interval; None if unknown."""
        self._refresh_if_due()
        return self._usage

    def check(self) -> None:
        """Warn, at most once an interval, when Redis is close to its maxmemory."""
        if not self._refresh_if_due():
            return
        usage = self._usage
        if usage is None or usage.used_ratio is None or usage.used_ratio < self._warn_ratio or usage.full:
            return  # full: every refused batch logs its ERROR line already
        logger.warning(
            "Redis memory is running low: %s, warning at %d%%; writes will be refused at 100%%: %s",
            usage.describe(),
            round(self._warn_ratio * 100),
            WHAT_TO_DO,
            extra={"redis_used_memory": usage.used_bytes, "redis_maxmemory": usage.maxmemory_bytes},
        )

    def refused(self, source: str, exc: BaseException, *, held: str, retry_in: float) -> None:
        """Log and count one batch that Redis refused for memory (`held`: what became of it)."""
        usage = self.usage()
        if usage is None or not usage.full:
            # A reading from before Redis filled up would contradict the refusal; the
            # refused batches wait out a backoff, so this is no INFO per batch either.
            self._checked_at = None
            usage = self.usage()
        figures = usage.describe() if usage is not None else "memory figures unavailable"
        logger.error(
            "Redis is out of memory (%s): %s refused, %s, retry in %.1fs: %s. Redis said: %s",
            figures,
            source,
            held,
            retry_in,
            WHAT_TO_DO,
            exc,
            extra={
                "source": source,
                "redis_used_memory": usage.used_bytes if usage else None,
                "redis_maxmemory": usage.maxmemory_bytes if usage else None,
                "retry_in_seconds": round(retry_in, 3),
            },
        )
        metrics.record_memory_refusal(source)


def init_app(app: Flask) -> None:
    """Build the process's MemoryWatch (after the Redis client)."""
    settings = settings_of(app)
    app.extensions["redis_memory"] = MemoryWatch(
        app.extensions["redis"], settings.redis_memory_warn_percent, settings.redis_memory_check_seconds
    )


def get_memory_watch() -> MemoryWatch:
    """The MemoryWatch of the current app."""
    return current_app.extensions["redis_memory"]
