"""The flush: moving Redis hour windows into PostgreSQL exactly once (guarantees 4, 5).

Per window hash:
1. `RENAMENX` the live hash to `snapshot:<hour>:<batch-id>`, atomically with the
   bookkeeping sets, so pulses arriving during the flush go to a fresh live hash;
2. in ONE PostgreSQL transaction, insert the batch id into `flush_batch` and, only if
   it was new, add the snapshot's sums to `pulse_usage`;
3. delete the snapshot.

A crash between 1 and 2 leaves a snapshot that the next run persists; a crash between
2 and 3 leaves one whose batch id is already in `flush_batch`, so the next run only
deletes it. Every run finishes such leftovers first. A Redis lock keeps two runs from
stampeding; the batch id is what makes two runs at once correct anyway.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from redis import Redis
from sqlalchemy import BigInteger, Numeric, String, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.types import DateTime

from ingestor.database import Database
from ingestor.pulses import keys
from ingestor.pulses.models import AMOUNT, FlushBatch, PulseUsage
from ingestor.pulses.schema import from_micro_units

logger = logging.getLogger(__name__)

# KEYS: live window, snapshot, pending-windows set, pending-snapshots set.
# Returns 1 when the window was renamed, 0 when it no longer exists.
SNAPSHOT_SCRIPT = """
redis.call('SREM', KEYS[3], KEYS[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('RENAMENX', KEYS[1], KEYS[2]) == 0 then
  return redis.error_reply('snapshot key already exists: ' .. KEYS[2])
end
redis.call('SADD', KEYS[4], KEYS[2])
return 1
"""


@dataclass(frozen=True)
class GroupSum:
    """The sum of one (tenant, product_sku, use_unity) group in one snapshot."""

    tenant: str
    product_sku: str
    use_unity: str
    used_amount: Decimal
    pulse_count: int


@dataclass
class PersistReport:
    """What one flush run did."""

    skipped: bool = False
    snapshots: int = 0
    groups: int = 0
    pulses: int = 0
    already_persisted: int = 0
    batch_ids: list[str] = field(default_factory=list)


def sum_groups(fields: dict[bytes, bytes]) -> list[GroupSum]:
    """Turn the fields of a window hash into one exact sum per group."""
    micro_units: dict[bytes, int] = {}
    counts: dict[bytes, int] = {}
    for name, value in fields.items():
        kind, _, group = name.partition(b"|")
        if kind == b"n":
            counts[group] = counts.get(group, 0) + int(value)
        elif kind == b"a" or (kind[:1] == b"a" and kind[1:].isdigit()):  # a1, a2...: spills
            micro_units[group] = micro_units.get(group, 0) + int(value)
        else:
            raise ValueError(f"unexpected field in a window hash: {name!r}")
    if micro_units.keys() - counts.keys():
        # The Lua script writes both in one call: an amount alone means corruption.
        raise ValueError(f"amount without a pulse count in a window hash: {micro_units.keys() - counts.keys()}")
    sums = []
    for group, count in counts.items():
        tenant, product_sku, use_unity = keys.parse_group_field(group)
        sums.append(
            GroupSum(tenant, product_sku, use_unity, from_micro_units(micro_units.get(group, 0)), count)
        )
    return sums


def _upsert_statement():
    """INSERT ... SELECT FROM unnest(arrays) ... ON CONFLICT add: one round trip per snapshot."""
    rows = func.unnest(
        bindparam("tenants", type_=ARRAY(String)),
        bindparam("product_skus", type_=ARRAY(String)),
        bindparam("use_unities", type_=ARRAY(String)),
        bindparam("used_amounts", type_=ARRAY(Numeric)),
        bindparam("pulse_counts", type_=ARRAY(BigInteger)),
    ).table_valued("tenant", "product_sku", "use_unity", "used_amount", "pulse_count").render_derived()
    source = select(
        rows.c.tenant,
        rows.c.product_sku,
        rows.c.use_unity,
        bindparam("window_start", type_=DateTime(timezone=True)),
        rows.c.used_amount.cast(AMOUNT),
        rows.c.pulse_count.cast(BigInteger),
    )
    usage = PulseUsage.__table__
    statement = insert(usage).from_select(
        ["tenant", "product_sku", "use_unity", "window_start", "used_amount", "pulse_count"], source
    )
    # Additive: a window persisted in several flushes (or a late pulse for an hour
    # already persisted) adds to the row instead of replacing it.
    return statement.on_conflict_do_update(
        index_elements=["tenant", "product_sku", "use_unity", "window_start"],
        set_={
            "used_amount": usage.c.used_amount + statement.excluded.used_amount,
            "pulse_count": usage.c.pulse_count + statement.excluded.pulse_count,
            "updated_at": func.now(),
        },
    )


UPSERT_USAGE = _upsert_statement()


class Persister:
    """Runs flushes of the Redis windows into PostgreSQL."""

    def __init__(self, redis: Redis, database: Database, lock_timeout_seconds: int = 900) -> None:
        self._redis = redis
        self._database = database
        self._snapshot = redis.register_script(SNAPSHOT_SCRIPT)
        self._lock_timeout = lock_timeout_seconds

    def persist_pending(self, wait_seconds: float = 0) -> PersistReport:
        """Persist every pending snapshot, then every live window; skip if a run holds the lock.

        `wait_seconds` is how long to wait for another run to finish (an operator's
        manual flush waits; the scheduled one does not need to).
        """
        lock = self._redis.lock(
            keys.FLUSH_LOCK,
            timeout=self._lock_timeout,
            blocking=wait_seconds > 0,
            blocking_timeout=wait_seconds or None,
        )
        if not lock.acquire():
            logger.info("flush skipped: another run holds the lock")
            return PersistReport(skipped=True)
        started = time.monotonic()
        report = PersistReport()
        try:
            # Leftovers of a crashed run first, then the live windows.
            for snapshot in sorted(self._members(keys.PENDING_SNAPSHOTS)):
                self.persist_snapshot(snapshot, report)
            for window in sorted(self._members(keys.PENDING_WINDOWS)):
                snapshot = self.take_snapshot(window)
                if snapshot is not None:
                    self.persist_snapshot(snapshot, report)
        finally:
            if lock.owned():
                lock.release()
            else:
                logger.warning("flush lock expired during the run; raise its timeout")
        duration = round(time.monotonic() - started, 3)
        logger.info(
            "flush finished: snapshots=%d groups=%d pulses=%d already_persisted=%d duration=%.3fs",
            report.snapshots, report.groups, report.pulses, report.already_persisted, duration,
            extra={**report.__dict__, "duration_seconds": duration},
        )  # fmt: skip
        return report

    def _members(self, set_key: str) -> Iterable[str]:
        return (member.decode() for member in self._redis.smembers(set_key))

    def take_snapshot(self, window: str) -> str | None:
        """Rename a live window hash to a new snapshot; None if it no longer exists."""
        snapshot, _ = keys.new_snapshot_key(window)
        renamed = self._snapshot(keys=[window, snapshot, keys.PENDING_WINDOWS, keys.PENDING_SNAPSHOTS])
        # 0: another run took this window first.
        return snapshot if renamed else None

    def persist_snapshot(self, snapshot: str, report: PersistReport | None = None) -> None:
        """Add one snapshot's sums to PostgreSQL once, then delete the snapshot."""
        report = report if report is not None else PersistReport()
        batch_id = keys.batch_id_of_snapshot(snapshot)
        window_start = keys.window_start_of_key(snapshot)
        sums = sum_groups(self._redis.hgetall(snapshot))
        if sums:
            is_new = self._write(batch_id, window_start, sums)
            report.snapshots += 1
            report.batch_ids.append(str(batch_id))
            if is_new:
                report.groups += len(sums)
                report.pulses += sum(s.pulse_count for s in sums)
            else:
                report.already_persisted += 1
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(snapshot)
            pipe.srem(keys.PENDING_SNAPSHOTS, snapshot)
            pipe.execute()

    def _write(self, batch_id: uuid.UUID, window_start: datetime, sums: list[GroupSum]) -> bool:
        """The one transaction of a snapshot; False if its batch id was already persisted."""
        with self._database.session() as session, session.begin():
            claimed = session.execute(
                insert(FlushBatch.__table__)
                .values(
                    id=batch_id,
                    window_start=window_start,
                    group_count=len(sums),
                    pulse_count=sum(s.pulse_count for s in sums),
                )
                .on_conflict_do_nothing(index_elements=["id"])
                .returning(FlushBatch.__table__.c.id)
            ).first()
            if claimed is None:
                return False
            session.execute(
                UPSERT_USAGE,
                {
                    "tenants": [s.tenant for s in sums],
                    "product_skus": [s.product_sku for s in sums],
                    "use_unities": [s.use_unity for s in sums],
                    "used_amounts": [s.used_amount for s in sums],
                    "pulse_counts": [s.pulse_count for s in sums],
                    "window_start": window_start,
                },
            )
        return True
