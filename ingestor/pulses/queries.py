"""Reading the persisted hourly sums: filters, stable order, pages and keyset cursors.

Rows are ordered newest hour first, then by id: `(window_start DESC, id DESC)`, paged
by `keyset.Keyset` (a cursor walks any depth at first-page speed).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, fields
from datetime import datetime

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from ingestor.pulses import keys
from ingestor.pulses.keyset import Keyset
from ingestor.pulses.models import PulseUsage


@dataclass(frozen=True)
class UsageFilter:
    """Filters on the group (each: any of its values; empty: no filter), and a half-open
    range [window_from, window_to)."""

    tenant: tuple[str, ...] = ()
    product_sku: tuple[str, ...] = ()
    use_unity: tuple[str, ...] = ()
    window_from: datetime | None = None
    window_to: datetime | None = None

    def digest(self) -> str:
        """A short name of this filter, for cache keys (the order of values does not matter)."""
        parts = [sorted(set(v)) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)]
        raw = json.dumps(parts, default=str).encode()
        return hashlib.blake2b(raw, digest_size=12).hexdigest()

    def apply(self, query: Select) -> Select:
        """Add the WHERE clauses of this filter to `query`."""
        for column, values in (
            (PulseUsage.tenant, self.tenant),
            (PulseUsage.product_sku, self.product_sku),
            (PulseUsage.use_unity, self.use_unity),
        ):
            if values:
                query = query.where(column.in_(values))
        if self.window_from is not None:
            query = query.where(PulseUsage.window_start >= self.window_from)
        if self.window_to is not None:
            query = query.where(PulseUsage.window_start < self.window_to)
        return query


@dataclass(frozen=True)
class UsagePage:
    """One page of sums, the total matching the filter, and where the next page starts."""

    items: list[PulseUsage]
    total: int
    next_cursor: str | None


USAGE_ORDER = Keyset(PulseUsage.window_start, PulseUsage.id)


class TotalCache:
    """Row counts per filter, cached in Redis until the table changes.

    `count(*)` over a million rows takes ~50 ms, longer than a whole page should, while
    the table changes only when a flush commits. So counts are cached under the current
    "usage version", a Redis counter the persister increments after every commit (and
    at the start of every run, which covers a crash between a commit and its
    increment); a new version makes every cached count unreachable. Entries also
    expire, bounding what a write outside the persister could leave stale. Redis
    trouble only costs the cache: the count is then taken from PostgreSQL.
    """

    def __init__(self, redis: Redis, ttl_seconds: int = 300) -> None:
        self._redis = redis
        self._ttl = ttl_seconds

    def total(self, usage_filter: UsageFilter, count: Callable[[], int]) -> int:
        """The cached count for `usage_filter`, or `count()` (then cached)."""
        try:
            version = int(self._redis.get(keys.USAGE_VERSION) or 0)
            key = f"{keys.USAGE_TOTAL_PREFIX}{version}:{usage_filter.digest()}"
            cached = self._redis.get(key)
        except RedisError:
            return count()
        if cached is not None:
            return int(cached)
        total = count()
        with suppress(RedisError):
            self._redis.set(key, total, ex=self._ttl)
        return total


def list_usage(
    session: Session,
    usage_filter: UsageFilter,
    limit: int,
    page: int = 1,
    cursor: str | None = None,
    totals: TotalCache | None = None,
) -> UsagePage:
    """A page of sums matching `usage_filter`: after `cursor` if given, else page `page`."""
    query = usage_filter.apply(select(PulseUsage))
    items, next_cursor = USAGE_ORDER.page(session, query, limit, cursor=cursor, offset=(page - 1) * limit)

    def count() -> int:
        return session.scalar(usage_filter.apply(select(func.count()).select_from(PulseUsage))) or 0

    total = totals.total(usage_filter, count) if totals is not None else count()
    return UsagePage(items=items, total=total, next_cursor=next_cursor)


def get_usage(session: Session, usage_id: int) -> PulseUsage | None:
    """One hourly sum by id, or None."""
    return session.get(PulseUsage, usage_id)
