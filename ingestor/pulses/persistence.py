"""The flush: moving Redis hour windows into PostgreSQL exactly once (guarantees 4, 5).

Per tag, from its registry (`ingestor:{t}:pending`, see keys.py):
1. entries committed longer ago than their grace are forgotten (their keys expired);
2. batches a crashed run left pending are persisted first;
3. per live hour, one script RENAMEs its 1024 window buckets to the snapshot buckets
   of a fresh batch id β and registers β as pending, so pulses arriving during the
   flush go to fresh live buckets;
4. in ONE PostgreSQL transaction, β goes into `flush_batch` and, only if it was new,
   the snapshot's sums are added to `pulse_usage`;
5. after the commit, DONE: each snapshot bucket gets an expiry of the grace
   (`PENDING_READ_GRACE_SECONDS`) and β is registered as committed with its deadline.
   The grace is what lets a pending read (pending.py), whose PostgreSQL snapshot was
   taken before the commit, still find the pulses in Redis.

A crash between 3 and 4 leaves a pending batch that the next run persists; a crash
between 4 and 5 leaves one whose id is already in `flush_batch`, so the next run only
does DONE. A Redis lock keeps two runs from stampeding; the batch id is what makes two
runs at once correct anyway. Each run first drains what the previous layout left
(legacy_flush.py).
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain
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
from ingestor.pulses.legacy_flush import LegacyDrain
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

logger = logging.getLogger(__name__)
T = TypeVar("T")

# The flush lock expires this long after the run last renewed it (it renews it after
# every snapshot). Short, because a run killed mid-flight cannot release it: the next
# run (the persist task redelivered by RabbitMQ) waits at most this long, instead of
# being skipped while a dead run's lock lives on. A run slower than this on one
# snapshot loses the lock early; harmless, since the batch id, not the lock, is what
# keeps two runs from counting a snapshot twice.
LOCK_TIMEOUT_SECONDS = 60

# RENAME. KEYS: the tag's registry, the hour's 1024 live buckets, the batch's 1024
# snapshot buckets. ARGV: the hour's registry field `w:<h>`, the batch's `s:<β>`, its
# pending state `<h>|p`. Returns the buckets renamed; 0 when the hour has no live
# buckets any more (another run took them). Everything is checked before the first
# write, so a refusal leaves nothing half done.
RENAME_SCRIPT = """#!lua
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
local n = (#KEYS - 1) / 2
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then
  return redis.error_reply('flush batch already registered: ' .. ARGV[2])
end
for b = 1, n do
  if redis.call('EXISTS', KEYS[1 + n + b]) == 1 then
    return redis.error_reply('snapshot key already exists: ' .. KEYS[1 + n + b])
  end
end
local renamed = 0
for b = 1, n do
  if redis.call('EXISTS', KEYS[1 + b]) == 1 then
    redis.call('RENAME', KEYS[1 + b], KEYS[1 + n + b])
    renamed = renamed + 1
  end
end
redis.call('HDEL', KEYS[1], ARGV[1])
if renamed > 0 then redis.call('HSET', KEYS[1], ARGV[2], ARGV[3]) end
redis.call('HINCRBY', KEYS[1], 'v', 1)
return renamed
"""

# DONE, after the commit. KEYS: the tag's registry, the batch's snapshot buckets.
# ARGV: `s:<β>`, the hour stamp, the grace in seconds. `EXPIRE ... NX`: a rerun keeps
# the first expiry. No version bump: readers treat pending and committed batches alike.
# Returns the deadline (Redis clock, ms).
DONE_SCRIPT = """#!lua
local grace = tonumber(ARGV[3])
for k = 2, #KEYS do redis.call('EXPIRE', KEYS[k], grace, 'NX') end
local now = redis.call('TIME')
local deadline = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + grace * 1000
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|d|' .. string.format('%d', deadline))
return deadline
"""
# How long a committed snapshot stays readable, unless the settings say otherwise.
DEFAULT_GRACE_SECONDS = 300


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
        grace_seconds: int = DEFAULT_GRACE_SECONDS,
    ) -> None:
        self._redis = redis
        self._database = database
        self._rename = redis.register_script(RENAME_SCRIPT)
        self._done = redis.register_script(DONE_SCRIPT)
        self._read_rows = redis.register_script(SERVER_SIDE_ROWS_SCRIPT)
        self._legacy = LegacyDrain(redis)
        self._lock_timeout = lock_timeout_seconds
        self._transaction_timeouts = {"timeout": str(transaction_timeout_ms)}
        self._grace = grace_seconds

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
            # What the previous layout left first (the migration), then every tag.
            for snapshot in self._legacy.snapshots():
                self._persist_legacy(snapshot, report)
                self._renew(lock)
            for tag in keys.SHARD_TAGS:
                self._flush_tag(tag, report, lock)
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

    def _flush_tag(self, tag: str, report: PersistReport, lock) -> None:
        """One tag: forget expired batches, finish leftovers, then snapshot every live hour."""
        registry = self.read_registry(tag)
        self._forget_expired(registry)
        for leftover in registry.in_state(keys.PENDING_STATE):
            self.persist_batch(tag, leftover.hour, leftover.batch_id, report)
            self._renew(lock)
        for hour in registry.live_hours:
            batch_id = self.take_snapshot(tag, hour)
            if batch_id is not None:
                self.persist_batch(tag, hour, batch_id, report)
                self._renew(lock)

    def read_registry(self, tag: str) -> keys.Registry:
        """The tag's registry as it is now."""
        return keys.parse_registry(tag, self._redis.hgetall(keys.registry_key(tag)))

    def _forget_expired(self, registry: keys.Registry) -> None:
        """Drop the registry entries of committed batches whose keys have expired."""
        seconds, microseconds = self._redis.time()
        now_ms = seconds * 1000 + microseconds // 1000
        expired = [
            keys.snapshot_field(entry.batch_id)
            for entry in registry.in_state(keys.DONE_STATE)
            if entry.deadline_ms is not None and entry.deadline_ms <= now_ms
        ]
        if expired:
            self._redis.hdel(keys.registry_key(registry.tag), *expired)

    @staticmethod
    def _renew(lock) -> None:  # redis-py's Lock
        """Push the lock's expiry a full timeout away again, if the run still holds it."""
        try:
            lock.reacquire()
        except LockError:
            pass  # expired already: reported once the run ends

    def take_snapshot(self, tag: str, hour: int) -> uuid.UUID | None:
        """Rename the live buckets of (tag, hour) to a new batch; None if none is left."""
        batch_id = uuid.uuid4()
        renamed = self._rename(
            keys=[
                keys.registry_key(tag),
                *keys.window_bucket_keys(tag, hour),
                *keys.snapshot_bucket_keys(tag, hour, batch_id),
            ],
            args=[
                keys.live_field(hour),
                keys.snapshot_field(batch_id),
                f"{keys.hour_stamp(hour)}|{keys.PENDING_STATE}",
            ],
        )
        # 0: another run took this hour first.
        return batch_id if renamed else None

    def persist_batch(
        self, tag: str, hour: int, batch_id: uuid.UUID, report: PersistReport | None = None
    ) -> None:
        """Add one batch's sums to PostgreSQL once, then mark it committed (DONE).

        A corrupt snapshot is set aside instead, so it cannot block every later flush.
        """
        report = report if report is not None else PersistReport()
        snapshot_keys = self._existing(keys.snapshot_bucket_keys(tag, hour, batch_id))
        try:
            written = self._write(batch_id, keys.hour_start(hour), snapshot_keys)
        except CorruptSnapshot:
            # Its transaction rolled back: nothing of it is counted. It stays in Redis,
            # named in CORRUPT_SNAPSHOTS, for an operator; the other windows go on.
            logger.exception("corrupt snapshot set aside: %s", batch_id, extra={"batch_id": str(batch_id)})
            # Named first, then marked: two slots on a cluster, so no transaction, and
            # a crash between the two leaves it pending, set aside again next run.
            if snapshot_keys:
                self._redis.sadd(keys.CORRUPT_SNAPSHOTS, *snapshot_keys)
            self._redis.hset(
                keys.registry_key(tag),
                keys.snapshot_field(batch_id),
                f"{keys.hour_stamp(hour)}|{keys.CORRUPT_STATE}",
            )
            report.corrupt_snapshots += snapshot_keys
            return
        self._record(report, batch_id, written)
        self._done(
            keys=[keys.registry_key(tag), *snapshot_keys],
            args=[keys.snapshot_field(batch_id), keys.hour_stamp(hour), self._grace],
        )

    def _existing(self, candidates: Sequence[str]) -> list[str]:
        """Those of `candidates` that exist (one pipelined round trip)."""
        with self._redis.pipeline(transaction=False) as pipe:
            for key in candidates:
                pipe.exists(key)
            found = pipe.execute()
        return [key for key, exists in zip(candidates, found, strict=True) if exists]

    def _record(self, report: PersistReport, batch_id: uuid.UUID, written: tuple[int, int] | None) -> None:
        report.snapshots += 1
        report.batch_ids.append(str(batch_id))
        if written is None:
            report.already_persisted += 1
        else:
            self._redis.incr(keys.USAGE_VERSION)
            report.groups += written[0]
            report.pulses += written[1]

    def _persist_legacy(self, snapshot: str, report: PersistReport) -> None:
        """Persist a snapshot of the previous layout once, then delete it (no grace:
        pending reads refuse to answer while such keys exist)."""
        batch_id = keys.legacy_batch_id_of_snapshot(snapshot)
        try:
            # Gone: a crashed run deleted it after its commit; only the bookkeeping is left.
            if self._redis.exists(snapshot):
                written = self._write(batch_id, keys.legacy_window_start_of_key(snapshot), [snapshot])
                self._record(report, batch_id, written)
        except CorruptSnapshot:
            logger.exception("corrupt snapshot set aside: %s", snapshot, extra={"snapshot": snapshot})
            self._legacy.set_aside(snapshot)
            report.corrupt_snapshots.append(snapshot)
            return
        self._legacy.forget(snapshot)

    def _write(
        self, batch_id: uuid.UUID, window_start: datetime, snapshot_keys: Sequence[str]
    ) -> tuple[int, int] | None:
        """The one transaction of a snapshot (the keys of one batch): (groups, pulses)
        added, or None if its batch id was already persisted.

        The rows come from the server-side reader; anything it cannot vouch for rolls
        its transaction back and the careful reader does the snapshot again.
        """
        window = window_start.isoformat().encode()
        try:
            chunks = server_side_chunks(self._read_rows, snapshot_keys, window)
            return self._write_chunks(batch_id, window_start, chunks)
        except CAREFUL_READ_ERRORS as exc:
            logger.info(
                "snapshot %s read again, carefully: %s", batch_id, exc, extra={"batch_id": str(batch_id)}
            )
        fields = chain.from_iterable(self._redis.hscan_iter(key, count=HSCAN_COUNT) for key in snapshot_keys)
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
