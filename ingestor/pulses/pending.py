"""Reading the usage still in Redis (not persisted yet), each pulse exactly once.

A pulse waiting for the flush is in a live window bucket, or in a snapshot batch β
that is pending or committed but still within its grace. Combined with what
PostgreSQL holds, a read must count it once whatever the flush does meanwhile:

1. `begin_usage_snapshot`: a REPEATABLE READ READ ONLY transaction takes its
   PostgreSQL snapshot Σ now, before Redis is read.
2. Per tag, the registry (version v, live hours, batches); which of its batches are
   committed in Σ (`flush_batch`, under Σ): PostgreSQL has those, they are not read.
3. `READ_PENDING` over the tenant's buckets of the live hours and of the other
   batches in range, fenced by v: a rename or a new live hour in between makes it
   STALE, and the tag is read again (its new batches checked as in 2).
4. If the read took longer than half the grace since 1, it is refused: a batch
   committed after Σ must still have its keys in Redis when they are read.

Asking PostgreSQL before Redis is read (2) rather than after changes nothing: Σ is
fixed, so the answer is the same, and the batches Σ holds (most of those in their
grace) are not read at all.

Why this order: reading Redis before Σ would count a pulse twice when its rename and
commit land in between (it is read live, and is in Σ); deleting a committed snapshot
without a grace would count it zero times when the commit comes after Σ and the delete
before the Redis read. docs/proposals/redis-layout-v2.md §6 goes through every case.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from flask import current_app, has_app_context
from redis import Redis
from sqlalchemy import text
from sqlalchemy.orm import Session

from ingestor.pulses import keys
from ingestor.pulses.legacy_flush import legacy_keys_exist
from ingestor.pulses.persistence import DEFAULT_GRACE_SECONDS
from ingestor.settings import settings_of

# Where begin_usage_snapshot leaves the monotonic time of the snapshot, in session.info.
SNAPSHOT_STARTED = "ingestor.pending.snapshot_started"
# A tag whose layout keeps changing under the read is read again this many times.
MAX_ATTEMPTS = 5
# Hash fields returned per READ_PENDING call: bounds how long one call holds Redis.
FIELD_BUDGET = 20_000
# Keys named per call (a read of every tenant names 1024 buckets per hour).
KEYS_PER_CALL = 1024
RETRY_AFTER_SECONDS = 1
LEGACY_RETRY_AFTER_SECONDS = 60

# KEYS: the tag's registry, then the keys to read. ARGV: the registry version read
# before, the field budget, P, P tenant prefixes (`["acme",`, none: every tenant),
# then a cursor per key ("0": from the start). Returns {"STALE"} if the version moved;
# else {"OK", then per key read: its next cursor ("0": done), its matching fields and
# values}. Keys past the budget are left out: the caller sends them again. A key that
# fits the budget left is read whole (HGETALL, an instant); a bigger one by HSCAN from
# its cursor. No writes: it runs while Redis is out of memory.
READ_PENDING_SCRIPT = """#!lua flags=no-writes
if (redis.call('HGET', KEYS[1], 'v') or '0') ~= ARGV[1] then return {'STALE'} end
local budget = tonumber(ARGV[2])
local n_prefixes = tonumber(ARGV[3])
local first_cursor = 4 + n_prefixes
local function wanted(field)
  if n_prefixes == 0 then return true end
  local bar = string.find(field, '|', 1, true)
  if not bar then return false end
  for i = 1, n_prefixes do
    local prefix = ARGV[3 + i]
    if string.sub(field, bar + 1, bar + #prefix) == prefix then return true end
  end
  return false
end
local out = {'OK'}
local spent = 0
for k = 2, #KEYS do
  if spent >= budget then break end
  local cursor = ARGV[first_cursor + k - 2]
  local fields
  local next_cursor = '0'
  if cursor == '0' and redis.call('HLEN', KEYS[k]) <= budget - spent then
    fields = redis.call('HGETALL', KEYS[k])
  else
    local scan = redis.call('HSCAN', KEYS[k], cursor, 'COUNT', budget - spent)
    next_cursor = scan[1]
    fields = scan[2]
  end
  spent = spent + #fields / 2
  local matching = {}
  for i = 1, #fields, 2 do
    if wanted(fields[i]) then
      matching[#matching + 1] = fields[i]
      matching[#matching + 1] = fields[i + 1]
    end
  end
  out[#out + 1] = next_cursor
  out[#out + 1] = matching
end
return out
"""


@dataclass(frozen=True, slots=True)
class PendingCell:
    """Usage counted in Redis for one (hour, tenant, sku, unit), not persisted yet."""

    hour: int  # hours since the Unix epoch (keys.hour_of)
    tenant: str
    product_sku: str
    use_unity: str
    micro_units: int
    pulse_count: int


class PendingUnavailable(Exception):
    """Pending usage cannot be read exactly right now (message says why)."""

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


def begin_usage_snapshot(session: Session) -> None:
    """Start the caller's REPEATABLE READ READ ONLY transaction and take its snapshot now."""
    # SET TRANSACTION must be the transaction's first statement; the SELECT takes the
    # snapshot (REPEATABLE READ takes it at the first query, not at BEGIN). Both in one
    # round trip: a one-tenant usage answer is a few of them.
    session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT 1"))
    session.info[SNAPSHOT_STARTED] = time.monotonic()


def read_pending_usage(
    session: Session,
    redis: Redis,
    tenants: Sequence[str] | None,
    first_hour: int,
    end_hour: int,
    *,
    grace_seconds: int | None = None,
) -> list[PendingCell]:
    """Usage counted in Redis for hours [first_hour, end_hour) and tenants (None = all)
    that the session's snapshot does not hold yet. Cells may repeat an (hour, group).

    `session` must have gone through `begin_usage_snapshot`. `grace_seconds` is the
    flush's `PENDING_READ_GRACE_SECONDS` (default: the current app's setting). Raises
    `PendingUnavailable` when the answer could not be exact.
    """
    started = session.info.get(SNAPSHOT_STARTED)
    if started is None:
        raise RuntimeError("read_pending_usage needs a session started by begin_usage_snapshot")
    grace = grace_seconds if grace_seconds is not None else _app_grace_seconds()
    if legacy_keys_exist(redis):
        raise PendingUnavailable(
            "draining the previous layout of Redis windows; pending usage is readable after the next flush",
            LEGACY_RETRY_AFTER_SECONDS,
        )
    wanted = None if tenants is None else sorted(set(tenants))
    read = _PendingRead(redis, wanted, first_hour, end_hour, partial(_committed, session))
    sources: list[tuple[int, dict[bytes, bytes]]] = []
    for tag in keys.SHARD_TAGS:
        sources += read.tag(tag)
    if time.monotonic() - started > grace / 2:
        raise PendingUnavailable(
            f"reading Redis took longer than half the grace of {grace}s after the PostgreSQL snapshot",
            RETRY_AFTER_SECONDS,
        )
    cells = _cells(sources)
    if wanted is None:
        return cells
    # A bucket holds other tenants too; their fields were filtered by prefix in Redis,
    # and here again by the decoded group.
    tenant_set = set(wanted)
    return [cell for cell in cells if cell.tenant in tenant_set]


def _app_grace_seconds() -> int:
    if has_app_context():
        return settings_of(current_app).pending_read_grace_seconds
    return DEFAULT_GRACE_SECONDS


def _committed(session: Session, batches: set[uuid.UUID]) -> set[uuid.UUID]:
    """Those of `batches` in flush_batch under the session's snapshot."""
    if not batches:
        return set()
    rows = session.execute(
        text("SELECT id FROM flush_batch WHERE id = ANY(CAST(:ids AS uuid[]))"),
        {"ids": [str(batch_id) for batch_id in batches]},
    )
    return {uuid.UUID(str(row[0])) for row in rows}


class _PendingRead:
    """READ_PENDING over the keys of one read, tag by tag."""

    def __init__(
        self,
        redis: Redis,
        tenants: list[str] | None,
        first_hour: int,
        end_hour: int,
        committed: Callable[[set[uuid.UUID]], set[uuid.UUID]],
    ) -> None:
        self._redis = redis
        self._committed_in_snapshot = committed
        # Batches asked about already: committed in the snapshot, or not (Σ is fixed).
        self._committed: set[uuid.UUID] = set()
        self._checked: set[uuid.UUID] = set()
        self._script = redis.register_script(READ_PENDING_SCRIPT)
        self._first_hour, self._end_hour = first_hour, end_hour
        if tenants is None:
            self._buckets = list(range(keys.BUCKETS))
            self._prefixes: list[bytes] = []
        else:
            self._buckets = sorted({keys.bucket_of(tenant) for tenant in tenants})
            self._prefixes = [keys.tenant_field_prefix(tenant) for tenant in tenants]

    def tag(self, tag: str) -> list[tuple[int, dict[bytes, bytes]]]:
        """(hour, fields) per key read, at one fenced version of the tag's registry."""
        for _ in range(MAX_ATTEMPTS):
            registry = keys.parse_registry(tag, self._redis.hgetall(keys.registry_key(tag)))
            unchecked = {entry.batch_id for entry in registry.snapshots} - self._checked
            if unchecked:
                self._committed |= self._committed_in_snapshot(unchecked)
                self._checked |= unchecked
            sources = self._sources(registry)
            fields = self._read(tag, registry.version, [key for key, _ in sources])
            if fields is not None:
                return [(hour, fields[key]) for key, hour in sources]
        raise PendingUnavailable(
            f"the windows of Redis tag {tag} changed under {MAX_ATTEMPTS} reads in a row", RETRY_AFTER_SECONDS
        )

    def _sources(self, registry: keys.Registry) -> list[tuple[str, int]]:
        """(key, hour) of every key to read: the wanted buckets of each live hour and of
        each pending or committed batch in range that the snapshot does not hold.
        Corrupt batches are in neither store (set aside for an operator): not read."""
        in_range = range(self._first_hour, self._end_hour)
        sources = [
            (keys.window_bucket_key(registry.tag, hour, bucket), hour)
            for hour in registry.live_hours
            if hour in in_range
            for bucket in self._buckets
        ]
        for entry in registry.snapshots:
            if (
                entry.hour in in_range
                and entry.state in (keys.PENDING_STATE, keys.DONE_STATE)
                and entry.batch_id not in self._committed
            ):
                sources += [
                    (keys.snapshot_bucket_key(registry.tag, entry.hour, entry.batch_id, bucket), entry.hour)
                    for bucket in self._buckets
                ]
        return sources

    def _read(self, tag: str, version: int, names: list[str]) -> dict[str, dict[bytes, bytes]] | None:
        """The matching fields of every key, or None when the version moved (STALE).

        A key read by HSCAN over several calls may see a field twice: it is taken once.
        """
        fields: dict[str, dict[bytes, bytes]] = {name: {} for name in names}
        remaining: list[tuple[str, bytes]] = [(name, b"0") for name in names]
        prefix_args: list[Any] = [len(self._prefixes), *self._prefixes]
        while remaining:
            batch = remaining[:KEYS_PER_CALL]
            reply = self._script(
                keys=[keys.registry_key(tag), *(name for name, _ in batch)],
                args=[version, FIELD_BUDGET, *prefix_args, *(cursor for _, cursor in batch)],
            )
            if reply[0] == b"STALE":
                return None
            results = reply[1:]
            done = len(results) // 2
            again: list[tuple[str, bytes]] = []
            for (name, _), cursor, pairs in zip(batch, results[0::2], results[1::2], strict=False):
                fields[name].update(zip(pairs[0::2], pairs[1::2], strict=True))
                if cursor != b"0":
                    again.append((name, cursor))
            remaining = again + remaining[done:]
        return fields


def _cells(sources: Iterable[tuple[int, dict[bytes, bytes]]]) -> list[PendingCell]:
    """The fields of the keys kept, summed per (hour, group) with exact integers.

    `n|<group>` is a pulse count, `a|<group>` and its spills `a1|`, `a2|`... micro-units.
    (A hot tenant's read goes through 200,000 fields per 100,000 groups: the plain
    kinds are sliced off, not partitioned.)
    """
    counts: dict[tuple[int, bytes], int] = {}
    amounts: dict[tuple[int, bytes], int] = {}
    for hour, fields in sources:
        for name, value in fields.items():
            kind = name[:2]
            if kind == b"n|":
                cell, into = (hour, name[2:]), counts
            elif kind == b"a|":
                cell, into = (hour, name[2:]), amounts
            else:
                spill, _, group = name.partition(b"|")
                if not (spill[:1] == b"a" and spill[1:].isdigit()):
                    continue  # not a field INGEST writes: the flush sets such a snapshot aside
                cell, into = (hour, group), amounts
            into[cell] = into.get(cell, 0) + int(value)
    cells = []
    for cell in counts.keys() | amounts.keys():
        tenant, product_sku, use_unity = keys.parse_group_field(cell[1])
        cells.append(
            PendingCell(cell[0], tenant, product_sku, use_unity, amounts.get(cell, 0), counts.get(cell, 0))
        )
    return cells
