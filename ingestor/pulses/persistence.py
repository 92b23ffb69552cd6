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

import io
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import suppress
from typing import Any, TypeVar
from dataclasses import dataclass, field
from datetime import datetime

from redis import Redis
from redis.exceptions import LockError
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert

from ingestor.database import Database
from ingestor.pulses import keys
from ingestor.pulses.models import FlushBatch

logger = logging.getLogger(__name__)
T = TypeVar("T")

# The flush lock expires this long after the run last renewed it (it renews it after
# every snapshot). Short, because a run killed mid-flight cannot release it: the next
# run (the persist task redelivered by RabbitMQ) waits at most this long, instead of
# being skipped while a dead run's lock lives on. A run slower than this on one
# snapshot loses the lock early; harmless, since the batch id, not the lock, is what
# keeps two runs from counting a snapshot twice.
LOCK_TIMEOUT_SECONDS = 60

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


@dataclass
class PersistReport:
    """What one flush run did."""

    skipped: bool = False
    snapshots: int = 0
    groups: int = 0
    pulses: int = 0
    already_persisted: int = 0
    batch_ids: list[str] = field(default_factory=list)
    corrupt_snapshots: list[str] = field(default_factory=list)


# A snapshot goes to PostgreSQL in chunks of groups: each chunk is streamed with COPY
# into a temporary table, then added to pulse_usage by one INSERT ... SELECT. A thread
# prepares the next chunk while PostgreSQL upserts the current one, so Python's share
# of the work mostly hides behind PostgreSQL's. All chunks share ONE transaction.
# (Profiling the first version, a Python loop decoding JSON into Decimals and then one
# INSERT binding 100,000-element arrays, showed it at twice PostgreSQL's own time.)
CHUNK_GROUPS = 10_000
CREATE_SNAPSHOT_CHUNK = """
CREATE TEMPORARY TABLE snapshot_chunk (
    tenant text NOT NULL, product_sku text NOT NULL, use_unity text NOT NULL,
    micro_units numeric NOT NULL, pulse_count bigint NOT NULL
) ON COMMIT DROP
"""
COPY_SNAPSHOT_CHUNK = "COPY snapshot_chunk FROM STDIN WITH (FORMAT csv)"
# Additive: a window persisted in several flushes (or a late pulse for an hour already
# persisted) adds to its row instead of replacing it. Micro-units become units by a
# multiplication, exact in NUMERIC; a division rounds big sums to 16 significant digits.
UPSERT_USAGE = text("""
INSERT INTO pulse_usage (tenant, product_sku, use_unity, window_start, used_amount, pulse_count)
SELECT tenant, product_sku, use_unity, :window_start, micro_units * 0.000001, pulse_count FROM snapshot_chunk
ON CONFLICT (tenant, product_sku, use_unity, window_start) DO UPDATE SET
    used_amount = pulse_usage.used_amount + excluded.used_amount,
    pulse_count = pulse_usage.pulse_count + excluded.pulse_count,
    updated_at = now()
""")


# Spill fields of a group already sent (rare: sums past 64 bits), added at the end.
CREATE_LATE_AMOUNTS = """
CREATE TEMPORARY TABLE snapshot_late_amount (
    tenant text NOT NULL, product_sku text NOT NULL, use_unity text NOT NULL, micro_units numeric NOT NULL
) ON COMMIT DROP
"""
COPY_LATE_AMOUNTS = "COPY snapshot_late_amount FROM STDIN WITH (FORMAT csv)"
ADD_LATE_AMOUNTS = text("""
UPDATE pulse_usage SET used_amount = used_amount + late.micro_units * 0.000001, updated_at = now()
FROM snapshot_late_amount AS late
WHERE pulse_usage.tenant = late.tenant AND pulse_usage.product_sku = late.product_sku
  AND pulse_usage.use_unity = late.use_unity AND pulse_usage.window_start = :window_start
""")
# Fields per HSCAN call while a snapshot streams to PostgreSQL.
HSCAN_COUNT = 5000


class CorruptSnapshot(ValueError):
    """A window hash holds fields the ingest script never writes: the flush stops."""


@dataclass(frozen=True)
class SnapshotChunk:
    """Some groups of a snapshot as CSV rows for COPY, and how many pulses they hold.

    The last chunk also carries `late_amounts`: CSV rows (tenant, product_sku,
    use_unity, micro-units) of spill fields that arrived after their group was sent.
    """

    csv: bytes
    groups: int
    pulses: int
    late_amounts: bytes = b""


def _csv_fields(group: bytes) -> bytes:
    """tenant, product_sku, use_unity of a group field as three quoted CSV fields."""
    if b"\\" not in group:
        # The group is the compact JSON '["t","s","u"]' (keys.group_field). With no
        # backslash it holds no escape, so no quote inside a value either, and the
        # part between the brackets is already three quoted CSV fields.
        return group[1:-1]
    return ",".join('"%s"' % value.replace('"', '""') for value in keys.parse_group_field(group)).encode()


def _is_amount(kind: bytes) -> bool:
    # `a`, and the spills `a1`, `a2`... of a sum that outgrew 64 bits.
    return kind == b"a" or (kind[:1] == b"a" and kind[1:].isdigit())


def snapshot_chunks(fields: Iterable[tuple[bytes, bytes]], chunk_groups: int = CHUNK_GROUPS) -> Iterator[SnapshotChunk]:
    """A snapshot's fields, as they stream from HSCAN, paired into per-group CSV chunks.

    A field is `<kind>|<group JSON>`: kind `n` holds the pulse count, `a` (and its
    spills) micro-units. A group is sent once its count and its `a` field are both in;
    a spill arriving after that is summed into `late_amounts`; a group with a count but
    no amount at all is sent, at zero, at the end. Sums are Python ints, exact at any
    size. HSCAN may return a field twice: each is taken once. Any other field (an
    unknown kind, an amount without a count) is corruption: the ingest script writes
    neither, so CorruptSnapshot stops the flush, its transaction rolls back, and the
    snapshot stays for an operator.
    """
    seen: set[bytes] = set()
    counts: dict[bytes, bytes] = {}  # count in, amount not yet
    amounts: dict[bytes, int] = {}  # amount(s) in, count not yet
    sent: set[bytes] = set()
    late: dict[bytes, int] = {}
    rows: list[bytes] = []
    pulses = 0

    def send(group: bytes, micro_units: int, count: bytes) -> None:
        nonlocal pulses
        rows.append(b"%s,%d,%s\n" % (_csv_fields(group), micro_units, count))
        pulses += int(count)
        sent.add(group)

    for name, value in fields:
        if name in seen:
            continue
        seen.add(name)
        kind, _, group = name.partition(b"|")
        if kind == b"n":
            if group in amounts:
                send(group, amounts.pop(group), value)
            else:
                counts[group] = value
        elif not _is_amount(kind):
            raise CorruptSnapshot(f"unexpected field in a window hash: {name[:200]!r}")
        elif group in sent:
            late[group] = late.get(group, 0) + int(value)
        elif kind == b"a" and group in counts:
            send(group, amounts.pop(group, 0) + int(value), counts.pop(group))
        else:
            amounts[group] = amounts.get(group, 0) + int(value)
        if len(rows) == chunk_groups:
            yield SnapshotChunk(b"".join(rows), len(rows), pulses)
            rows, pulses = [], 0
    for group, micro_units in list(amounts.items()):
        if group not in counts:
            raise CorruptSnapshot(f"amount without a pulse count in a window hash: {group[:200]!r}")
    for group, count in counts.items():
        send(group, amounts.get(group, 0), count)
    late_rows = b"".join(b"%s,%d\n" % (_csv_fields(group), micro) for group, micro in late.items())
    yield SnapshotChunk(b"".join(rows), len(rows), pulses, late_rows)


def run_ahead(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate `items` in a thread, up to `depth` items ahead of the consumer.

    The producer's exception is re-raised in the consumer, in order.
    """
    handoff: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                handoff.put((True, item))
            handoff.put((False, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            handoff.put((False, exc))

    thread = threading.Thread(target=produce, name="snapshot-chunks", daemon=True)
    thread.start()
    try:
        while True:
            more, item = handoff.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with suppress(queue.Empty):
                handoff.get_nowait()
            thread.join(0.01)


class Persister:
    """Runs flushes of the Redis windows into PostgreSQL."""

    def __init__(self, redis: Redis, database: Database, lock_timeout_seconds: int = LOCK_TIMEOUT_SECONDS) -> None:
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
        # A run that crashed between a commit and its version bump left cached row
        # counts stale: bump first (see queries.TotalCache).
        self._redis.incr(keys.USAGE_VERSION)
        try:
            # Leftovers of a crashed run first, then the live windows.
            for snapshot in sorted(self._members(keys.PENDING_SNAPSHOTS)):
                self._persist_or_quarantine(snapshot, report)
                self._renew(lock)
            for window in sorted(self._members(keys.PENDING_WINDOWS)):
                snapshot = self.take_snapshot(window)
                if snapshot is not None:
                    self._persist_or_quarantine(snapshot, report)
                    self._renew(lock)
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

    @staticmethod
    def _renew(lock) -> None:  # noqa: ANN001 - redis-py's Lock
        """Push the lock's expiry a full timeout away again, if the run still holds it."""
        try:
            lock.reacquire()
        except LockError:
            pass  # expired already: reported once the run ends

    def _members(self, set_key: str) -> Iterable[str]:
        return (member.decode() for member in self._redis.smembers(set_key))

    def take_snapshot(self, window: str) -> str | None:
        """Rename a live window hash to a new snapshot; None if it no longer exists."""
        snapshot, _ = keys.new_snapshot_key(window)
        renamed = self._snapshot(keys=[window, snapshot, keys.PENDING_WINDOWS, keys.PENDING_SNAPSHOTS])
        # 0: another run took this window first.
        return snapshot if renamed else None

    def _persist_or_quarantine(self, snapshot: str, report: PersistReport) -> None:
        """Persist a snapshot; set a corrupt one aside so it cannot block every later flush."""
        try:
            self.persist_snapshot(snapshot, report)
        except CorruptSnapshot:
            # Its transaction rolled back: nothing of it is counted. It stays in Redis,
            # named in CORRUPT_SNAPSHOTS, for an operator; the other windows go on.
            logger.exception("corrupt snapshot set aside: %s", snapshot, extra={"snapshot": snapshot})
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.srem(keys.PENDING_SNAPSHOTS, snapshot)
                pipe.sadd(keys.CORRUPT_SNAPSHOTS, snapshot)
                pipe.execute()
            report.corrupt_snapshots.append(snapshot)

    def persist_snapshot(self, snapshot: str, report: PersistReport | None = None) -> None:
        """Add one snapshot's sums to PostgreSQL once, then delete the snapshot."""
        report = report if report is not None else PersistReport()
        batch_id = keys.batch_id_of_snapshot(snapshot)
        window_start = keys.window_start_of_key(snapshot)
        # Gone: a crashed run deleted it after its commit; only the bookkeeping is left.
        if self._redis.exists(snapshot):
            written = self._write(batch_id, window_start, snapshot)
            report.snapshots += 1
            report.batch_ids.append(str(batch_id))
            if written is None:
                report.already_persisted += 1
            else:
                self._redis.incr(keys.USAGE_VERSION)
                report.groups += written[0]
                report.pulses += written[1]
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.unlink(snapshot)  # freed in the background: a big hash would block Redis
            pipe.srem(keys.PENDING_SNAPSHOTS, snapshot)
            pipe.execute()

    def _write(self, batch_id: uuid.UUID, window_start: datetime, snapshot: str) -> tuple[int, int] | None:
        """The one transaction of a snapshot: (groups, pulses) added, or None if its
        batch id was already persisted."""
        with self._database.session() as session, session.begin():
            flush_batch = FlushBatch.__table__
            claimed = session.execute(
                insert(flush_batch)
                .values(id=batch_id, window_start=window_start, group_count=0, pulse_count=0)
                .on_conflict_do_nothing(index_elements=["id"])
                .returning(flush_batch.c.id)
            ).first()
            if claimed is None:
                return None
            groups = pulses = 0
            # COPY needs the driver's cursor; it runs inside the session's transaction.
            with session.connection().connection.cursor() as cursor:
                cursor.execute(CREATE_SNAPSHOT_CHUNK)
                fields = self._redis.hscan_iter(snapshot, count=HSCAN_COUNT)
                for chunk in run_ahead(snapshot_chunks(fields)):
                    cursor.execute("TRUNCATE snapshot_chunk")
                    cursor.copy_expert(COPY_SNAPSHOT_CHUNK, io.BytesIO(chunk.csv))
                    session.execute(UPSERT_USAGE, {"window_start": window_start})
                    groups, pulses = groups + chunk.groups, pulses + chunk.pulses
                if chunk.late_amounts:
                    cursor.execute(CREATE_LATE_AMOUNTS)
                    cursor.copy_expert(COPY_LATE_AMOUNTS, io.BytesIO(chunk.late_amounts))
                    session.execute(ADD_LATE_AMOUNTS, {"window_start": window_start})
            session.execute(
                flush_batch.update()
                .where(flush_batch.c.id == batch_id)
                .values(group_count=groups, pulse_count=pulses)
            )
        return groups, pulses
