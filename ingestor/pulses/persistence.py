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
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar, cast

import psycopg2
import psycopg2.errors
import redis.exceptions
from psycopg2.extensions import cursor as DriverCursor
from redis import Redis
from redis.exceptions import LockError
from sqlalchemy import Table, text
from sqlalchemy.dialects.postgresql import insert

from ingestor.database import Database
from ingestor.pulses import keys
from ingestor.pulses.models import FlushBatch
from ingestor.pulses.snapshot_rows import (
    HSCAN_COUNT,
    SERVER_SIDE_ROWS_SCRIPT,
    CorruptSnapshot,
    SnapshotChunk,
    UnusualSnapshot,
    server_side_chunks,
    snapshot_chunks,
)
from ingestor.redis_store import text_of

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


# A snapshot goes to PostgreSQL in chunks of rows (snapshot_rows), all in ONE
# transaction, while a thread reads the next chunks from Redis. Into a window that has
# no row yet (its first flush, the usual case) the chunks are COPied straight into
# pulse_usage; into one that has rows (a late pulse, a window flushed twice) they are
# COPied into a temporary table and added by ONE INSERT ... SELECT ... ON CONFLICT.
# Either way a group sent twice is refused, never added twice: by the unique key, or
# by the upsert, which refuses to touch a row twice (see server_side_chunks).
# Additive: a window persisted in several flushes adds to its rows, never replaces them.
USAGE_COLUMNS = "tenant, product_sku, use_unity, window_start, used_amount, pulse_count"
COPY_INTO_USAGE = f"COPY pulse_usage ({USAGE_COLUMNS}) FROM STDIN WITH (FORMAT csv)"
CREATE_SNAPSHOT_ROWS = """
CREATE TEMPORARY TABLE snapshot_rows (
    tenant text NOT NULL, product_sku text NOT NULL, use_unity text NOT NULL,
    window_start timestamptz NOT NULL, used_amount numeric(38, 6) NOT NULL, pulse_count bigint NOT NULL
) ON COMMIT DROP
"""
COPY_SNAPSHOT_ROWS = "COPY snapshot_rows FROM STDIN WITH (FORMAT csv)"
UPSERT_USAGE = f"""
INSERT INTO pulse_usage ({USAGE_COLUMNS}) SELECT * FROM snapshot_rows ORDER BY tenant, product_sku, use_unity
ON CONFLICT (tenant, product_sku, use_unity, window_start) DO UPDATE SET
    used_amount = pulse_usage.used_amount + excluded.used_amount,
    pulse_count = pulse_usage.pulse_count + excluded.pulse_count,
    updated_at = now()
"""
# A flush transaction whose client vanished without a word (a worker frozen, a network
# path dropped silently) would hold its locks, and with them every later flush of its
# window and batch, until the server's TCP keepalive gives up (hours). The server ends
# it after this long idle inside the transaction (a flush is never idle for more than
# a Redis round trip), and a flush waits at most this long for a lock, then fails and
# is retried with backoff like any transient error.
TRANSACTION_TIMEOUT_MS = 60_000
SET_TRANSACTION_TIMEOUTS = text(
    "SELECT set_config('idle_in_transaction_session_timeout', :timeout, true),"
    " set_config('lock_timeout', :timeout, true)"
)
# Flushes of one window take turns from here to their commit, so that "the window
# has no row yet" stays true until the COPY that relies on it commits. (READ
# COMMITTED, the default: the check after the lock sees the previous flush's rows.)
LOCK_WINDOW = text("SELECT pg_advisory_xact_lock(:namespace, :hours_since_epoch)")
WINDOW_LOCK_NAMESPACE = 0x5055  # "PU": pulse_usage windows
WINDOW_HAS_ROWS = text("SELECT EXISTS (SELECT 1 FROM pulse_usage WHERE window_start = :window_start)")

# Spill fields of a group already sent (rare: sums past 64 bits), added at the end.
CREATE_LATE_AMOUNTS = """
CREATE TEMPORARY TABLE snapshot_late_amount (
    tenant text NOT NULL, product_sku text NOT NULL, use_unity text NOT NULL, used_amount numeric NOT NULL
) ON COMMIT DROP
"""
COPY_LATE_AMOUNTS = "COPY snapshot_late_amount FROM STDIN WITH (FORMAT csv)"
ADD_LATE_AMOUNTS = text("""
UPDATE pulse_usage SET used_amount = pulse_usage.used_amount + late.used_amount, updated_at = now()
FROM snapshot_late_amount AS late
WHERE pulse_usage.tenant = late.tenant AND pulse_usage.product_sku = late.product_sku
  AND pulse_usage.use_unity = late.use_unity AND pulse_usage.window_start = :window_start
""")
# Errors of the server-side reader's rows that the careful reader turns into a clear
# CorruptSnapshot (or proves wrong): a value PostgreSQL cannot parse, a row twice; and
# Redis refusing the script itself (an ACL without EVALSHA, a script error), which
# would otherwise stop every later flush at this snapshot.
CAREFUL_READ_ERRORS = (
    UnusualSnapshot,
    psycopg2.DataError,
    psycopg2.IntegrityError,
    psycopg2.errors.CardinalityViolation,
    redis.exceptions.ResponseError,
)


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
        except BaseException as exc:  # handed to the consumer
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

    def __init__(
        self,
        redis: Redis,
        database: Database,
        lock_timeout_seconds: int = LOCK_TIMEOUT_SECONDS,
        transaction_timeout_ms: int = TRANSACTION_TIMEOUT_MS,
    ) -> None:
        self._redis = redis
        self._database = database
        self._snapshot = redis.register_script(SNAPSHOT_SCRIPT)
        self._read_rows = redis.register_script(SERVER_SIDE_ROWS_SCRIPT)
        self._lock_timeout = lock_timeout_seconds
        self._transaction_timeouts = {"timeout": str(transaction_timeout_ms)}

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
            # A run that crashed between a commit and its version bump left cached row
            # counts stale: bump first (see queries.TotalCache). Inside the try: a full
            # Redis refuses it, and the lock must not outlive the refusal.
            self._redis.incr(keys.USAGE_VERSION)
            # Leftovers of a crashed run first, then the live windows.
            for leftover in sorted(self._members(keys.PENDING_SNAPSHOTS)):
                self._persist_or_quarantine(leftover, report)
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
            report.snapshots,
            report.groups,
            report.pulses,
            report.already_persisted,
            duration,
            extra={**report.__dict__, "duration_seconds": duration},
        )
        return report

    @staticmethod
    def _renew(lock) -> None:  # redis-py's Lock
        """Push the lock's expiry a full timeout away again, if the run still holds it."""
        try:
            lock.reacquire()
        except LockError:
            pass  # expired already: reported once the run ends

    def _members(self, set_key: str) -> Iterable[str]:
        return (text_of(member) for member in self._redis.smembers(set_key))

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
        batch id was already persisted.

        The rows come from the server-side reader; anything it cannot vouch for rolls
        its transaction back and the careful reader does the snapshot again.
        """
        window = window_start.isoformat().encode()
        try:
            chunks = server_side_chunks(self._read_rows, self._redis, snapshot, window)
            return self._write_chunks(batch_id, window_start, chunks)
        except CAREFUL_READ_ERRORS as exc:
            logger.info("snapshot %s read again, carefully: %s", snapshot, exc, extra={"snapshot": snapshot})
        fields = self._redis.hscan_iter(snapshot, count=HSCAN_COUNT)
        return self._write_chunks(batch_id, window_start, snapshot_chunks(fields, window))

    def _write_chunks(
        self, batch_id: uuid.UUID, window_start: datetime, chunks: Iterable[SnapshotChunk]
    ) -> tuple[int, int] | None:
        with self._database.session() as session, session.begin():
            session.execute(SET_TRANSACTION_TIMEOUTS, self._transaction_timeouts)
            flush_batch = cast(Table, FlushBatch.__table__)
            claimed = session.execute(
                insert(flush_batch)
                .values(id=batch_id, window_start=window_start, group_count=0, pulse_count=0)
                .on_conflict_do_nothing(index_elements=["id"])
                .returning(flush_batch.c.id)
            ).first()
            if claimed is None:
                return None
            hours_since_epoch = int(window_start.timestamp()) // 3600
            session.execute(
                LOCK_WINDOW, {"namespace": WINDOW_LOCK_NAMESPACE, "hours_since_epoch": hours_since_epoch}
            )
            first_flush = not session.execute(WINDOW_HAS_ROWS, {"window_start": window_start}).scalar()
            groups = pulses = 0
            late_amounts = b""
            # COPY needs the driver's cursor; it runs inside the session's transaction.
            with cast(DriverCursor, session.connection().connection.cursor()) as cursor:
                if not first_flush:
                    cursor.execute(CREATE_SNAPSHOT_ROWS)
                for chunk in run_ahead(chunks):
                    # One read() of the whole chunk: copy_expert's default of 8 KiB
                    # per read() took the GIL back from the reading thread 60 times a chunk.
                    rows, size = io.BytesIO(chunk.csv), len(chunk.csv) + 1
                    cursor.copy_expert(COPY_INTO_USAGE if first_flush else COPY_SNAPSHOT_ROWS, rows, size)
                    groups, pulses = groups + chunk.groups, pulses + chunk.pulses
                    late_amounts = chunk.late_amounts
                if not first_flush:
                    cursor.execute(UPSERT_USAGE)
                if late_amounts:
                    cursor.execute(CREATE_LATE_AMOUNTS)
                    cursor.copy_expert(COPY_LATE_AMOUNTS, io.BytesIO(late_amounts))
                    session.execute(ADD_LATE_AMOUNTS, {"window_start": window_start})
            session.execute(
                flush_batch.update()
                .where(flush_batch.c.id == batch_id)
                .values(group_count=groups, pulse_count=pulses)
            )
        return groups, pulses
