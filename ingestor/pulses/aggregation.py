"""Counting valid pulses into Redis hour windows, each at most once (guarantees 2, 3).

A batch is applied by one Lua script per tag, atomically. A pulse with an id is looked
up by its fingerprint in the tag's id index (time-bucketed, partitioned listpack
hashes, `keys.id_index_key`; about 13 bytes an id) and counts only if it is not
there, which the script then records; so is the one pulse of a message of one pulse
without id. Any other pulse without id counts only if its bit in its message's ledger
(a bitmap, `keys.message_ledger_key`) is clear, and the script sets the bit; each
ledger then expires a horizon after its last count. Either way a pulse whose v1 dedupe
key is still there is a duplicate. Counted pulses `HINCRBY` their window bucket.
A redelivered message therefore finds its pulses recorded and counts nothing twice,
and a crash can never leave a pulse deduped but not counted (the script runs whole or
not at all). The script also registers each hour that received counts in the tag's
registry (`w:<h>`), bumping its version when the hour is new there, so a flush finds
the hour without a SCAN and a pending read sees that the set of hours changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from redis import Redis
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ConnectionError,
    NoScriptError,
    OutOfMemoryError,
    ResponseError,
    TryAgainError,
)

from ingestor.pulses import keys
from ingestor.redis_store import (
    DEFAULT_LISTPACK_ENTRIES,
    ReplicaWaitTimeout,
    hash_listpack_entries,
    is_cluster,
    is_out_of_memory,
    node_for_key,
    refresh_topology,
)

# The batch is sent compactly: each distinct (window, group) "cell" once, then per
# pulse only its dedupe key, its cell number and its micro-units.
# KEYS: the tag's registry, its id index, the W distinct window bucket keys, the L
#       distinct message ledgers, then one dedupe key per pulse (its v1 key, only read;
#       none on a Redis Cluster: untagged, each in a slot of its own, and a cluster
#       install never had v1).
# ARGV: horizon, W, C, L, bucket seconds, hash-max-listpack-entries, then C cells as
#       (window number, group), then per pulse (cell number, micro-units, ledger number
#       or 0, its bit, its fingerprint's selector or -1, its fingerprint's field), then
#       per window its registry field `w:<hour>`.
# Returns how many pulses were counted (the others were duplicates).
#
# A pulse with a fingerprint (an id, or alone in its message) is looked up in the id
# index: HEXISTS of its field in its partition of each segment of each bucket that
# ended less than a horizon ago (2 in the steady state), then HSETNX in the current
# bucket's last segment, which answers for that segment too (0: a duplicate). Time is
# Redis's (TIME; effects replication, Redis ≥ 5), so workers with skewed clocks agree.
# A bucket takes ids for `bucket seconds` (half a horizon) from its first; its
# partitions expire a horizon after its end, so an id is remembered at least H and at
# most H + bucket seconds + 1 s. A bucket's first segment has the partitions its
# predecessor's ids would fill to half the listpack limit; a segment filled to 5/8 of
# it on average gets a successor with 4 times the partitions, so each hash stays a
# listpack (about 13 bytes an id) whatever the rate does.
# A pulse without fingerprint: its bit in its message's ledger must be clear.
# v1 keys (EXISTS) and a one-pulse message's ledger bit (GETBIT), how the previous
# releases deduplicated them, are read only until the second the index's field `l`
# names (`mark_legacy_horizon`: the first count of this release + a horizon; 0 on a
# fresh install), and always while it is absent: an EXISTS a pulse spared after. Counts and
# amounts are summed per cell in Lua and written with one HINCRBY each at the end: Lua
# numbers are doubles, exact for integers below 2^53, so a cell's running sum stays in
# Lua only while it is below 2^52; a pulse that would take it further is added by
# HINCRBY from its string.
INGEST_SCRIPT = """
local function add_amount(window, group, micro_units)
  -- HINCRBY refuses to leave 64 bits; a sum that would spills into a, a1, a2...
  local kind = 'a'
  local spill = 0
  while true do
    local reply = redis.pcall('HINCRBY', window, kind .. '|' .. group, micro_units)
    if type(reply) == 'number' then return end
    if not string.find(reply['err'], 'overflow', 1, true) then error(reply['err']) end
    spill = spill + 1
    kind = 'a' .. spill
  end
end

local EXACT_IN_LUA = 4503599627370496  -- 2^52
local SELECTORS = 4294967296  -- 2^32: a fingerprint's selector is its first 4 bytes
local MAX_PARTITIONS = 1048576
local horizon = tonumber(ARGV[1])
local n_windows = tonumber(ARGV[2])
local n_cells = tonumber(ARGV[3])
local n_ledgers = tonumber(ARGV[4])
local bucket_seconds = tonumber(ARGV[5])
local listpack_entries = tonumber(ARGV[6])
local index_key = KEYS[2]
local first_key = 3 + n_windows + n_ledgers
local first_arg = 7 + 2 * n_cells
local n_pulses = (#ARGV - n_windows - first_arg + 1) / 6

local function cell_window(cell) return KEYS[2 + tonumber(ARGV[5 + 2 * cell])] end
local function cell_group(cell) return ARGV[6 + 2 * cell] end
local function ledger_key(ledger) return KEYS[2 + n_windows + ledger] end

-- The id index, read on the first pulse.
local now, live, newest, current = nil, nil, nil, nil
-- Whether v1 keys and the previous release's one-pulse ledger bits may still exist:
-- until the second the index's field `l` names (absent: assume they may).
local legacy_reads = true
local function load_index()
  now = tonumber(redis.call('TIME')[1])
  live = {}
  local raw = redis.call('HGETALL', index_key)
  local by_start = {}
  for i = 1, #raw, 2 do
    local name, value = raw[i], raw[i + 1]
    if name == 'l' then
      legacy_reads = now < tonumber(value)
    else
      local kind, start = string.sub(name, 1, 1), string.sub(name, 2)
      local bucket = by_start[start]
      if not bucket then
        bucket = {start = start, filled = 0, total = 0}
        by_start[start] = bucket
      end
      if kind == 'b' then
        local sep = string.find(value, '|', 1, true)
        bucket.stop = tonumber(string.sub(value, 1, sep - 1))
        bucket.segments = {}
        for p in string.gmatch(string.sub(value, sep + 1), '%d+') do
          bucket.segments[#bucket.segments + 1] = tonumber(p)
        end
      elseif kind == 'c' then bucket.filled = tonumber(value)
      elseif kind == 't' then bucket.total = tonumber(value) end
    end
  end
  for start, bucket in pairs(by_start) do
    if bucket.stop and bucket.stop + horizon > now then
      live[#live + 1] = bucket
    else  -- ended a horizon ago: its partitions have expired
      redis.call('HDEL', index_key, 'b' .. start, 'c' .. start, 't' .. start)
    end
    if bucket.stop and (newest == nil or tonumber(start) > tonumber(newest.start)) then newest = bucket end
  end
end

local function current_bucket()
  if current then return current end
  if newest and now < newest.stop then
    current = newest
    return current
  end
  local partitions, wanted = 1, (newest and newest.total or 0) / (listpack_entries / 2)
  while partitions < wanted and partitions < MAX_PARTITIONS do partitions = partitions * 2 end
  current = {start = tostring(now), stop = now + bucket_seconds, segments = {partitions}, filled = 0, total = 0}
  live[#live + 1] = current
  return current
end

-- A pulse's partition number as text, per partition count: the same for each bucket
-- whose segment has as many partitions, and formatting a number is the dear part.
local named_selector, named_partitions, named_partition = nil, nil, nil
local function partition_key(bucket, partitions, selector)
  if selector ~= named_selector or partitions ~= named_partitions then
    named_selector, named_partitions = selector, partitions
    named_partition = tostring(math.floor(selector / (SELECTORS / partitions)))
  end
  -- Each segment's key prefix built once a call.
  local prefixes = bucket.prefixes
  if not prefixes then
    prefixes = {}
    bucket.prefixes = prefixes
  end
  local prefix = prefixes[partitions]
  if not prefix then
    prefix = index_key .. ':' .. bucket.start .. ':' .. partitions .. ':'
    prefixes[partitions] = prefix
  end
  return prefix .. named_partition
end

-- Whether a field is in a segment of a live bucket, the current bucket's last
-- segment excepted (its HSETNX answers for it).
local function in_index(selector, field)
  for _, bucket in ipairs(live) do
    local segments = bucket.segments
    local n = #segments
    if bucket == current then n = n - 1 end
    for s = 1, n do
      if redis.call('HEXISTS', partition_key(bucket, segments[s], selector), field) == 1 then return true end
    end
  end
  return false
end

local expiring = {}
-- Looks a fingerprint up and, if it is new, remembers it in the current bucket's last
-- segment: an HEXISTS per other segment of the live buckets, then one HSETNX.
local function new_in_index(selector, field)
  local bucket = current_bucket()
  if in_index(selector, field) then return false end
  local partitions = bucket.segments[#bucket.segments]
  local key = partition_key(bucket, partitions, selector)
  if redis.call('HSETNX', key, field, 1) == 0 then return false end
  expiring[key] = bucket.stop + horizon
  bucket.filled = bucket.filled + 1
  bucket.total = bucket.total + 1
  bucket.changed = true
  if bucket.filled >= partitions * listpack_entries * 5 / 8 and partitions < MAX_PARTITIONS then
    bucket.segments[#bucket.segments + 1] = partitions * 4
    bucket.filled = 0
  end
  return true
end

-- Whether a pulse is new, marking it seen: in the id index, or by its bit in a ledger.
local set_ledgers = {}
local function first_time(key, ledger, bit, selector, field)
  if not live then load_index() end
  if selector >= 0 then
    if legacy_reads and key then
      if redis.call('EXISTS', key) == 1 then return false end
      if ledger > 0 and redis.call('GETBIT', ledger_key(ledger), bit) == 1 then return false end
    end
    return new_in_index(selector, field)
  end
  if redis.call('GETBIT', ledger_key(ledger), bit) == 1 then return false end
  if legacy_reads and key and redis.call('EXISTS', key) == 1 then return false end
  redis.call('SETBIT', ledger_key(ledger), bit, 1)
  set_ledgers[ledger] = true
  return true
end

local counts, sums = {}, {}
local counted = 0
for p = 0, n_pulses - 1 do
  local i = first_arg + 6 * p
  local key = KEYS[first_key + p]
  if first_time(key, tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4]), ARGV[i + 5]) then
    local cell = tonumber(ARGV[i])
    local micro_units = ARGV[i + 1]
    local value = tonumber(micro_units)
    local sum = sums[cell] or 0
    if value < EXACT_IN_LUA and sum + value < EXACT_IN_LUA then
      sums[cell] = sum + value
    else
      add_amount(cell_window(cell), cell_group(cell), micro_units)
    end
    counts[cell] = (counts[cell] or 0) + 1
    counted = counted + 1
  end
end
for cell, count in pairs(counts) do
  local window, group = cell_window(cell), cell_group(cell)
  if (sums[cell] or 0) > 0 then
    add_amount(window, group, string.format('%d', sums[cell]))
  end
  redis.call('HINCRBY', window, 'n|' .. group, count)
end
-- A ledger lives a horizon after its message's last count.
for ledger, _ in pairs(set_ledgers) do redis.call('EXPIRE', ledger_key(ledger), horizon) end
if current and current.changed then
  redis.call('HSET', index_key, 'b' .. current.start, current.stop .. '|' .. table.concat(current.segments, ','),
    'c' .. current.start, current.filled, 't' .. current.start, current.total)
end
for key, at in pairs(expiring) do redis.call('EXPIREAT', key, at) end
-- Each hour that received counts is registered; a new hour is a change readers must see.
local first_live_field = #ARGV - n_windows
local registered = {}
for cell, _ in pairs(counts) do
  local field = ARGV[first_live_field + tonumber(ARGV[5 + 2 * cell])]
  if not registered[field] then
    registered[field] = true
    if redis.call('HSETNX', KEYS[1], field, 1) == 1 then redis.call('HINCRBY', KEYS[1], 'v', 1) end
  end
end
return counted
"""


class CountablePulse(NamedTuple):
    """A validated pulse reduced to what Redis needs to count it.

    `window_key` is its live window bucket, `keys.window_key(tag, hour, tenant)` with
    the tag of its dedupe record (`keys.tag_of_dedupe_key`); `dedupe_key` is its v1
    key, only read. A pulse with an id, or alone in its message, has a `fingerprint`
    (`keys.id_fingerprint`, `keys.place_fingerprint`) looked up in the id index; any
    other pulse without id has a `ledger` (`keys.message_ledger_key`, same tag) and its
    `bit` there (its index). A pulse with both has its ledger only read: how the
    previous release recorded a message of one pulse.
    """

    dedupe_key: bytes
    window_key: str
    group: bytes
    micro_units: int
    ledger: bytes = b""
    bit: int = 0
    fingerprint: bytes = b""


def pulse_with_id(
    tenant: str, pulse_id: str, window_key: str, group: bytes, micro_units: int
) -> CountablePulse:
    """The countable pulse of `tenant` with id `pulse_id` (its v1 key and fingerprint)."""
    return CountablePulse(
        keys.dedupe_key_for_id(tenant, pulse_id),
        window_key,
        group,
        micro_units,
        fingerprint=keys.id_fingerprint(tenant, pulse_id),
    )


class PulseCounter:
    """Applies validated pulses to the Redis hour windows through the Lua script."""

    def __init__(
        self,
        redis: Redis,
        dedupe_horizon_seconds: int,
        chunk_size: int,
        listpack_entries: int | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> None:
        """`listpack_entries`: the Redis `hash-max-listpack-entries` the id index sizes
        its partitions for; read from Redis on first use when not given.
        `wait_replicas`: after each call, WAIT until that many replicas of the master
        have it, at most `wait_timeout_ms` (0: no WAIT, one round trip a chunk)."""
        self._redis = redis
        self._script = redis.register_script(INGEST_SCRIPT)
        # v1 dedupe keys are read only on a single node (see INGEST_SCRIPT's KEYS).
        self._legacy_keys = not is_cluster(redis)
        self._horizon = dedupe_horizon_seconds
        self._bucket_seconds = keys.id_bucket_seconds(dedupe_horizon_seconds)
        self._chunk_size = chunk_size
        self._listpack_entries = listpack_entries
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        # Each node's calls in one pipeline to it: on a cluster, and wherever WAIT must
        # follow the writes on their connection.
        self._per_node = is_cluster(redis) or wait_replicas > 0
        self._legacy_marked: set[str] = set()

    def count(self, pulses: Sequence[CountablePulse]) -> int:
        """Count `pulses` once each; return how many were new (not duplicates).

        Pulses go in one call per tag (every key of a call in one slot), large batches
        in chunks so one call never holds Redis for long; each chunk is idempotent, so
        a failure between chunks is safe to retry whole. With `wait_replicas`, a batch
        is done only once that many replicas of each master have its writes.

        Redis refusing a chunk for memory raises `OutOfMemoryError`, whichever form the
        refusal took (Redis 7 passes the OOM reply on; earlier versions wrap it in a
        script error), so that callers hold the batch instead of dead-lettering it.
        """
        if self._listpack_entries is None:
            self._listpack_entries = hash_listpack_entries(self._redis)
        per_tag = _per_tag(pulses)
        if self._legacy_keys:
            for tag, _ in per_tag:
                if tag not in self._legacy_marked:
                    mark_legacy_horizon(self._redis, tag, self._horizon)
                    self._legacy_marked.add(tag)
        calls = (
            self._script_arguments(tag, of_tag[start : start + self._chunk_size])
            for tag, of_tag in per_tag
            for start in range(0, len(of_tag), self._chunk_size)
        )
        try:
            if self._per_node:
                return self._count_per_node(list(calls))
            # A single node, no WAIT: one round trip a chunk, nothing more.
            return sum(
                int(self._script(keys=script_keys, args=script_args)) for script_keys, script_args in calls
            )
        except OutOfMemoryError:
            raise
        except ResponseError as exc:
            if is_out_of_memory(exc):
                raise OutOfMemoryError(str(exc)) from exc
            raise

    def _count_per_node(self, calls: list[tuple[list[bytes | str], list[bytes | int | str]]]) -> int:
        """The calls of each master in one pipeline to it, then WAIT when asked.

        On a cluster a batch is a call per tag (16): one round trip per master, not per
        tag. WAIT waits for the writes of its own connection, hence the pipeline: it
        follows the master's calls on their connection. Fewer replicas than asked raises
        ReplicaWaitTimeout: the writes stand on the master and may be lost with it, so
        the batch is retried rather than acked; the retry finds its pulses counted
        (nothing twice) and waits again.
        """
        by_node: dict[Redis, list[tuple[list[bytes | str], list[bytes | int | str]]]] = {}
        for call in calls:
            by_node.setdefault(node_for_key(self._redis, call[0][0]), []).append(call)
        counted = 0
        for node, node_calls in by_node.items():
            try:
                replies = self._node_pipeline(node, node_calls)
            except (ConnectionError, AskError, ClusterDownError, TryAgainError):
                # The master died or its slots moved (a failover, a resharding): the retry
                # asks the node holding them then.
                refresh_topology(self._redis)
                raise
            if self._wait_replicas and replies.pop() < self._wait_replicas:
                raise ReplicaWaitTimeout(
                    f"fewer than {self._wait_replicas} replica(s) confirmed a batch's write within "
                    f"{self._wait_timeout_ms} ms (REDIS_WAIT_REPLICAS, REDIS_WAIT_TIMEOUT_MS): retried, not acked"
                )
            counted += sum(int(reply) for reply in replies)
        return counted

    def _node_pipeline(
        self, node: Redis, calls: list[tuple[list[bytes | str], list[bytes | int | str]]]
    ) -> list:
        """EVALSHA of each call, then WAIT when asked, in one round trip to `node`.

        EVALSHA by hand: a pipeline given the Script object would ask SCRIPT EXISTS
        first, a round trip more per batch. A node without the script (a replica just
        promoted: Redis 7 does not replicate the script cache) gets it, and the calls
        are sent again, idempotent.
        """
        try:
            return self._send(node, calls)
        except NoScriptError:
            node.script_load(INGEST_SCRIPT)
            return self._send(node, calls)

    def _send(self, node: Redis, calls: list[tuple[list[bytes | str], list[bytes | int | str]]]) -> list:
        with node.pipeline(transaction=False) as pipe:
            for script_keys, script_args in calls:
                pipe.evalsha(self._script.sha, len(script_keys), *script_keys, *script_args)
            if self._wait_replicas:
                pipe.wait(self._wait_replicas, self._wait_timeout_ms)
            return pipe.execute()

    def _script_arguments(
        self, tag: str, chunk: Sequence[CountablePulse]
    ) -> tuple[list[bytes | str], list[bytes | int | str]]:
        """KEYS and ARGV of one script call (layout described above INGEST_SCRIPT)."""
        windows: dict[str, int] = {}
        ledgers: dict[bytes, int] = {}
        cells: dict[tuple[str, bytes], int] = {}
        cell_args: list[bytes | int] = []
        dedupe_keys: list[bytes | str] = []
        pulse_args: list[bytes | int] = []
        selector_bytes = keys.ID_SELECTOR_BYTES
        for pulse in chunk:
            cell = cells.get((pulse.window_key, pulse.group))
            if cell is None:
                window = windows.setdefault(pulse.window_key, len(windows) + 1)
                cell = cells[(pulse.window_key, pulse.group)] = len(cells) + 1
                cell_args += (window, pulse.group)
            ledger = ledgers.setdefault(pulse.ledger, len(ledgers) + 1) if pulse.ledger else 0
            dedupe_keys.append(pulse.dedupe_key)
            fingerprint = pulse.fingerprint
            if fingerprint:
                selector = int.from_bytes(fingerprint[:selector_bytes], "big")
                pulse_args += (
                    cell,
                    pulse.micro_units,
                    ledger,
                    pulse.bit,
                    selector,
                    fingerprint[selector_bytes:],
                )
            elif ledger:
                pulse_args += (cell, pulse.micro_units, ledger, pulse.bit, -1, b"")
            else:
                raise ValueError(f"a pulse with neither fingerprint nor ledger: {pulse!r}")
        script_keys: list[bytes | str] = [keys.registry_key(tag), keys.id_index_key(tag), *windows, *ledgers]
        if self._legacy_keys:
            script_keys += dedupe_keys
        live_fields = [keys.live_field_of_window(window) for window in windows]
        counts = [
            self._horizon,
            len(windows),
            len(cells),
            len(ledgers),
            self._bucket_seconds,
            self._listpack_entries or DEFAULT_LISTPACK_ENTRIES,
        ]
        return script_keys, [*counts, *cell_args, *pulse_args, *live_fields]


def mark_legacy_horizon(redis: Redis, tag: str, horizon_seconds: int) -> int:
    """Record in the tag's id index until when v1 keys may exist, once; return it.

    The first count of this release on a Redis decides: one that holds what a previous
    release wrote (its registry, id index, v1 layout sets, any v1 `d` key or message
    ledger) may hold
    v1 keys for one more horizon, so the second a horizon from now; an empty one (a
    fresh install) none, 0. The ingest script reads v1 keys, and the one-pulse ledger
    bits of the release before, only before that second (always while the field is
    absent). HSETNX: the first process to decide wins, and the moment never moves.
    """
    index = keys.id_index_key(tag)
    marked = redis.hget(index, keys.ID_INDEX_LEGACY_FIELD)
    if marked is not None:
        return int(marked)
    now = int(redis.time()[0])
    until = now + horizon_seconds if _holds_previous_release(redis, tag) else 0
    redis.hsetnx(index, keys.ID_INDEX_LEGACY_FIELD, until)
    return int(redis.hget(index, keys.ID_INDEX_LEGACY_FIELD) or until)


def _holds_previous_release(redis: Redis, tag: str) -> bool:
    if redis.exists(
        keys.registry_key(tag),
        keys.id_index_key(tag),
        keys.LEGACY_PENDING_WINDOWS,
        keys.LEGACY_PENDING_SNAPSHOTS,
    ):
        return True
    # Once per Redis: a database of the previous release is nearly all `d` keys and
    # message ledgers, so this stops in its first batch; an empty one is scanned in no time.
    ledgers = keys.message_ledger_key(tag, b"")
    return any(
        key.startswith(keys.DEDUPE_PREFIX) or key.startswith(ledgers) for key in redis.scan_iter(count=1000)
    )


def _per_tag(pulses: Sequence[CountablePulse]) -> list[tuple[str, Sequence[CountablePulse]]]:
    """The pulses of each tag, in their order (one tag on a single node: no copy)."""
    if len(keys.SHARD_TAGS) == 1:
        return [(keys.SHARD_TAGS[0], pulses)] if pulses else []
    of_tag: dict[str, list[CountablePulse]] = {}
    for pulse in pulses:
        of_tag.setdefault(keys.tag_of_key(pulse.window_key), []).append(pulse)
    return list(of_tag.items())
