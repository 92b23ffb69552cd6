"""Counting valid pulses into Redis hour windows, each at most once (guarantees 2, 3).

A batch is applied by one Lua script per tag, atomically. A pulse with an id is looked
up by its fingerprint in the tag's id index (time-bucketed, partitioned pairs of
intsets, `keys.id_index_key`; 12 bytes an id) and counts only if it is not there,
which the script then records; so is the one pulse of a message of one pulse
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
    DEFAULT_SET_ENTRIES,
    ReplicaWaitTimeout,
    is_cluster,
    is_out_of_memory,
    node_for_key,
    refresh_topology,
    set_intset_entries,
)

# The batch is sent compactly: each distinct (window, group) "cell" once, then per
# pulse only what its dedupe needs, its cell number and its micro-units.
# KEYS: the tag's registry, its id index, the W distinct window bucket keys, the L
#       distinct message ledgers, then, when sent ('v' below), one v1 dedupe key per
#       pulse in the order of the pulses below (only read; never on a Redis Cluster:
#       untagged, each in a slot of its own, and a cluster install never had v1).
# ARGV: horizon, W, C, L, bucket seconds, set-max-intset-entries, what is sent of the
#       previous releases' records ('v': v1 keys, and each fingerprinted pulse's ledger
#       number or 0 and bit; 'h': each one's 9-byte field of the previous release's hash
#       index; 'c': a cluster, which never held v1 records), F; then C cells as (window
#       number, group); then the F pulses with a fingerprint as (cell number,
#       micro-units, path, wide member, narrow member, [field], [ledger number, bit]),
#       then those without as (cell number, micro-units, ledger number, bit); then per
#       window its registry field `w:<hour>`.
# Returns {pulses counted (the others were duplicates), what the script needs of the
# previous releases' records}; {-1, needs} when it was not sent what it needs, having
# counted nothing: the caller sends the chunk again with it (PulseCounter._needs).
#
# A pulse with a fingerprint (an id, or alone in its message) is looked up in the id
# index, in each segment of each bucket that ended less than a horizon ago (2 in the
# steady state): its wide member in its partition's wide set, and only if there its
# narrow member in the narrow set (SISMEMBER); then SADD of both into the current
# bucket's last segment, whose answer stands for that segment (wide already there and
# narrow too: a duplicate). The fingerprints come sorted by path; the segments that
# have at most half as many partitions as the call has fingerprints (a bucket growing
# fast) are looked up for all of them first, one SMISMEMBER per partition. Time is
# Redis's (TIME; effects replication, Redis ≥ 5), so workers with skewed clocks agree.
# A bucket takes ids for `bucket seconds` (half a horizon) from its first; its sets
# expire a horizon after its end (EXPIREAT by the SADD that created the set, which adds
# its sentinel too), so an id is remembered at least H and at most H + bucket seconds
# + 1 s. A bucket's first segment has the partitions its predecessor's ids would fill
# to half the intset limit; a call that would fill the last segment past 5/8 of it on
# average first gets a successor with 4 times the partitions (or more), so each set
# stays an intset (12 bytes an id) whatever the rate does, and no segment closes during
# a call. A bucket of hashes the release before wrote is looked up (HEXISTS of the
# field) until it expires, never written.
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
local MAX_PARTITIONS = 1048576  -- 2^20: a fingerprint's path has 20 bits
-- Every set of the index holds its sentinel from its creation: an SADD that adds 2
-- members is the one that created the key, and only it sets the key's expiry. Wide
-- members are never the int64 minimum (keys.id_index_members), narrow ones never < 0.
local WIDE_SENTINEL, NARROW_SENTINEL = '-9223372036854775808', '-1'
local horizon = tonumber(ARGV[1])
local n_windows = tonumber(ARGV[2])
local n_cells = tonumber(ARGV[3])
local n_ledgers = tonumber(ARGV[4])
local bucket_seconds = tonumber(ARGV[5])
local set_entries = tonumber(ARGV[6])
-- What the caller sent for the previous releases' records: 'v' v1 keys and ledger bits,
-- 'h' hash fields (either or both, or ''); 'c': a Redis Cluster, which never held v1
-- records (the releases before the id index ran on one node).
local with_v1 = string.find(ARGV[7], 'v', 1, true) ~= nil
local with_fields = string.find(ARGV[7], 'h', 1, true) ~= nil
local never_v1 = string.find(ARGV[7], 'c', 1, true) ~= nil
local n_fingerprinted = tonumber(ARGV[8])
local index_key = KEYS[2]
local first_key = 3 + n_windows + n_ledgers
local first_arg = 9 + 2 * n_cells
-- A pulse with a fingerprint: cell, micro-units, path, wide, narrow, [field], [ledger, bit].
local fingerprint_stride = 5 + (with_fields and 1 or 0) + (with_v1 and 2 or 0)
local ledger_field = with_fields and 6 or 5
-- A pulse without: cell, micro-units, ledger, bit; after all those with one.
local first_ledger_arg = first_arg + fingerprint_stride * n_fingerprinted
local n_pulses = n_fingerprinted + (#ARGV - n_windows - first_ledger_arg + 1) / 4
local function arg_of(p)
  if p < n_fingerprinted then return first_arg + fingerprint_stride * p end
  return first_ledger_arg + 4 * (p - n_fingerprinted)
end

local function cell_window(cell) return KEYS[2 + tonumber(ARGV[7 + 2 * cell])] end
local function cell_group(cell) return ARGV[8 + 2 * cell] end
local function ledger_key(ledger) return KEYS[2 + n_windows + ledger] end

-- The index's fields per bucket, by kind: its end and segments, the ids in its last
-- segment, the ids in all; of a bucket of sets (this release) or of hashes (the
-- release before: only read, until it expires).
local SET_FIELDS = {s = 'stop', f = 'filled', n = 'total'}
local HASH_FIELDS = {b = 'stop', c = 'filled', t = 'total'}

-- The id index, read before the first pulse.
local now, live, newest, current = nil, {}, nil, nil
-- Whether a bucket of hashes (the release before) may still hold ids.
local hashes_live = false
-- Whether v1 keys and the previous release's one-pulse ledger bits may still exist:
-- until the second the index's field `l` names (absent: assume they may).
local legacy_reads = true
local function load_index()
  now = tonumber(redis.call('TIME')[1])
  local raw = redis.call('HGETALL', index_key)
  local buckets = {}
  for i = 1, #raw, 2 do
    local name, value = raw[i], raw[i + 1]
    if name == 'l' then
      legacy_reads = now < tonumber(value)
    else
      local kind, start = string.sub(name, 1, 1), string.sub(name, 2)
      local of_sets = SET_FIELDS[kind] ~= nil
      local what = SET_FIELDS[kind] or HASH_FIELDS[kind]
      local id = (of_sets and 's' or 'b') .. start
      local bucket = buckets[id]
      if not bucket then
        bucket = {start = start, sets = of_sets, filled = 0, total = 0}
        buckets[id] = bucket
      end
      if what == 'stop' then
        local sep = string.find(value, '|', 1, true)
        bucket.stop = tonumber(string.sub(value, 1, sep - 1))
        bucket.segments = {}
        for p in string.gmatch(string.sub(value, sep + 1), '%d+') do
          bucket.segments[#bucket.segments + 1] = tonumber(p)
        end
      elseif what then
        bucket[what] = tonumber(value)
      end
    end
  end
  for _, bucket in pairs(buckets) do
    if bucket.stop and bucket.stop + horizon > now then
      live[#live + 1] = bucket
      if not bucket.sets then hashes_live = true end
    elseif bucket.sets then  -- ended a horizon ago: its partitions have expired
      redis.call('HDEL', index_key, 's' .. bucket.start, 'f' .. bucket.start, 'n' .. bucket.start)
    else
      redis.call('HDEL', index_key, 'b' .. bucket.start, 'c' .. bucket.start, 't' .. bucket.start)
    end
    if bucket.stop and (newest == nil or tonumber(bucket.start) > tonumber(newest.start)) then newest = bucket end
  end
end

local function current_bucket()
  if current then return current end
  if newest and newest.sets and now < newest.stop then
    current = newest
    return current
  end
  local partitions, wanted = 1, (newest and newest.total or 0) / (set_entries / 2)
  while partitions < wanted and partitions < MAX_PARTITIONS do partitions = partitions * 2 end
  current = {start = tostring(now), stop = now + bucket_seconds, sets = true, segments = {partitions},
    filled = 0, total = 0}
  live[#live + 1] = current
  return current
end

-- Before the call's first id: its last segment gets room for all n fingerprints of the
-- call, or a successor with 4 times the partitions (more if n needs it) takes them, so a
-- segment never fills past 5/8 of the intset limit on average whatever the order of the
-- call's ids (sorted by path: the first partitions take theirs first). An empty last
-- segment (no key yet) is resized instead. No segment is closed during a call.
local function make_room(bucket, n)
  local segments = bucket.segments
  local partitions = segments[#segments]
  local room = set_entries * 5 / 8
  if bucket.filled + n <= partitions * room or partitions >= MAX_PARTITIONS then return end
  repeat partitions = partitions * 4 until n <= partitions * room or partitions >= MAX_PARTITIONS
  partitions = math.min(partitions, MAX_PARTITIONS)
  if bucket.filled == 0 then
    segments[#segments] = partitions
  else
    segments[#segments + 1] = partitions
    bucket.filled = 0
  end
  bucket.changed = true
end

-- A segment's key prefixes, built once a call: of its wide and narrow sets (their
-- partition named by the first log2(P) bits of the fingerprint's path), or of its
-- hashes (a bucket of the release before: partition named by its number), and the
-- partition's depth in bits.
local function segment_of(bucket, partitions)
  local of_bucket = bucket.prefixes
  if not of_bucket then
    of_bucket = {}
    bucket.prefixes = of_bucket
  end
  local segment = of_bucket[partitions]
  if not segment then
    local base = index_key .. ':' .. bucket.start .. ':' .. partitions .. ':'
    local depth = 0
    while 2 ^ depth < partitions do depth = depth + 1 end
    if bucket.sets then segment = {base .. '64:', base .. '20:', depth} else segment = {base, nil, depth} end
    of_bucket[partitions] = segment
  end
  return segment
end

-- The partition of a fingerprint in a segment: a prefix of its path, or (a bucket of
-- hashes) the number that prefix spells.
local function partition_of(segment, path, sets)
  local name = string.sub(path, 1, segment[3])
  if sets then return name end
  return segment[3] == 0 and '0' or tostring(tonumber(name, 2))
end

-- Whether a fingerprint is in a segment of a live bucket: each segment not looked up
-- for the whole call already, the current bucket's last segment excepted (its SADD
-- answers for it). Found: both its wide and its narrow member in their sets (a bucket
-- of hashes: its field).
local function in_index(path, wide, narrow, field)
  for _, bucket in ipairs(live) do
    local segments, batched = bucket.segments, bucket.batched
    local n = #segments
    if bucket == current then n = n - 1 end
    for s = 1, n do
      if not batched[s] then
        local segment = segment_of(bucket, segments[s])
        local p = partition_of(segment, path, bucket.sets)
        if bucket.sets then
          if redis.call('SISMEMBER', segment[1] .. p, wide) == 1
            and redis.call('SISMEMBER', segment[2] .. p, narrow) == 1 then return true end
        elseif redis.call('HEXISTS', segment[1] .. p, field) == 1 then
          return true
        end
      end
    end
  end
  return false
end

-- The pulses with a fingerprint found in a segment looked up for the whole call, and
-- their paths and wide members (read once for every segment looked up so).
local found, paths, wides = {}, {}, {}
local LOOKUP_SLICE = 500

-- Looks the call's fingerprints up in a segment of few partitions at once: per
-- partition one SMISMEMBER of their wide members, then SISMEMBER of the narrow member
-- of each one there. Only a segment closed before the call: nothing enters it meanwhile.
-- The caller sends the fingerprints sorted by path, so those of one partition follow
-- each other at every depth: a partition's are a range of `wides`, found by comparing
-- each path's prefix with the one before (grouping them in tables cost 8 times more:
-- 4 µs a pulse in a fresh index's first bucket). Sent in any other order, a partition
-- is just looked up in more ranges.
local function look_up_range(segment, name, first, last)
  for from = first, last, LOOKUP_SLICE do
    local to = math.min(last, from + LOOKUP_SLICE - 1)
    local hits = redis.call('SMISMEMBER', segment[1] .. name, unpack(wides, from, to))
    for k, hit in ipairs(hits) do
      local p = from + k - 1
      if hit == 1 and not found[p] and redis.call('SISMEMBER', segment[2] .. name, ARGV[arg_of(p) + 4]) == 1 then
        found[p] = true
      end
    end
  end
end

local function look_up_segment(bucket, partitions)
  local segment = segment_of(bucket, partitions)
  local depth = segment[3]
  local first, name = 0, string.sub(paths[0], 1, depth)
  for p = 1, n_fingerprinted - 1 do
    local of_p = string.sub(paths[p], 1, depth)
    if of_p ~= name then
      look_up_range(segment, name, first, p - 1)
      first, name = p, of_p
    end
  end
  look_up_range(segment, name, first, n_fingerprinted - 1)
end

-- Before the first pulse: room made for the call's ids, then the closed segments with
-- at most half as many partitions as the call has fingerprints are looked up for all of
-- them at once (a bucket growing fast has several, and an SISMEMBER per pulse and
-- segment would cost more than the insert); the others per pulse.
local function look_up_small_segments()
  load_index()
  if n_fingerprinted == 0 then return end
  make_room(current_bucket(), n_fingerprinted)
  for _, bucket in ipairs(live) do
    bucket.batched = {}
    local n = #bucket.segments
    if bucket == current then n = n - 1 end
    for s = 1, n do
      if bucket.sets and bucket.segments[s] * 2 <= n_fingerprinted then
        if not paths[0] then
          for p = 0, n_fingerprinted - 1 do
            local i = first_arg + fingerprint_stride * p
            paths[p], wides[p] = ARGV[i + 2], ARGV[i + 3]
          end
        end
        bucket.batched[s] = true
        look_up_segment(bucket, bucket.segments[s])
      end
    end
  end
end

-- Looks a fingerprint up and, if it is new, remembers it in the current bucket's last
-- segment: a lookup per other segment of the live buckets, then SADD of its wide
-- member (none added: already there, so a duplicate if its narrow one is there too)
-- and of its narrow one.
local function new_in_index(path, wide, narrow, field)
  local bucket = current
  if in_index(path, wide, narrow, field) then return false end
  local partitions = bucket.segments[#bucket.segments]
  local segment = segment_of(bucket, partitions)
  local p = partition_of(segment, path, true)
  local wide_key, narrow_key = segment[1] .. p, segment[2] .. p
  local added = redis.call('SADD', wide_key, wide, WIDE_SENTINEL)
  if added == 0 and redis.call('SISMEMBER', narrow_key, narrow) == 1 then return false end
  if added == 2 then redis.call('EXPIREAT', wide_key, bucket.stop + horizon) end
  if redis.call('SADD', narrow_key, narrow, NARROW_SENTINEL) == 2 then
    redis.call('EXPIREAT', narrow_key, bucket.stop + horizon)
  end
  bucket.filled = bucket.filled + 1
  bucket.total = bucket.total + 1
  bucket.changed = true
  return true
end

-- Whether pulse p (its arguments from i) is new, marking it seen: in the id index, or
-- by its bit in a ledger.
local set_ledgers = {}
local function first_time(p, i, key)
  if p < n_fingerprinted then
    if found[p] then return false end
    if legacy_reads and key then
      if redis.call('EXISTS', key) == 1 then return false end
      local ledger = tonumber(ARGV[i + ledger_field])
      if ledger > 0 and redis.call('GETBIT', ledger_key(ledger), ARGV[i + ledger_field + 1]) == 1 then
        return false
      end
    end
    return new_in_index(ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5])
  end
  local ledger = tonumber(ARGV[i + 2])
  if redis.call('GETBIT', ledger_key(ledger), ARGV[i + 3]) == 1 then return false end
  if legacy_reads and key and redis.call('EXISTS', key) == 1 then return false end
  redis.call('SETBIT', ledger_key(ledger), ARGV[i + 3], 1)
  set_ledgers[ledger] = true
  return true
end

look_up_small_segments()
if never_v1 then legacy_reads = false end
-- What this call needs of the previous releases' records and did not get: nothing is
-- counted, and the caller sends them (the reply says which it should send from now on).
local needs = (legacy_reads and 'v' or '') .. (hashes_live and 'h' or '')
if (legacy_reads and not with_v1) or (hashes_live and not with_fields) then return {-1, needs} end
-- Per cell (its number as text): the pulses counted and the sum of their micro-units.
local counts, sums = {}, {}
local counted = 0
for p = 0, n_pulses - 1 do
  local i = arg_of(p)
  if first_time(p, i, with_v1 and KEYS[first_key + p]) then
    local cell = ARGV[i]
    local micro_units = ARGV[i + 1]
    local value = tonumber(micro_units)
    local sum = sums[cell] or 0
    if value < EXACT_IN_LUA and sum + value < EXACT_IN_LUA then
      sums[cell] = sum + value
    else
      add_amount(cell_window(tonumber(cell)), cell_group(tonumber(cell)), micro_units)
    end
    counts[cell] = (counts[cell] or 0) + 1
    counted = counted + 1
  end
end
for cell, count in pairs(counts) do
  local window, group = cell_window(tonumber(cell)), cell_group(tonumber(cell))
  if (sums[cell] or 0) > 0 then
    add_amount(window, group, string.format('%d', sums[cell]))
  end
  redis.call('HINCRBY', window, 'n|' .. group, count)
end
-- A ledger lives a horizon after its message's last count.
for ledger, _ in pairs(set_ledgers) do redis.call('EXPIRE', ledger_key(ledger), horizon) end
if current and current.changed then
  redis.call('HSET', index_key, 's' .. current.start, current.stop .. '|' .. table.concat(current.segments, ','),
    'f' .. current.start, current.filled, 'n' .. current.start, current.total)
end
-- Each hour that received counts is registered; a new hour is a change readers must see.
local first_live_field = #ARGV - n_windows
local registered = {}
for cell, _ in pairs(counts) do
  local field = ARGV[first_live_field + tonumber(ARGV[7 + 2 * tonumber(cell)])]
  if not registered[field] then
    registered[field] = true
    if redis.call('HSETNX', KEYS[1], field, 1) == 1 then redis.call('HINCRBY', KEYS[1], 'v', 1) end
  end
end
return {counted, needs}
"""


class CountablePulse(NamedTuple):
    """A validated pulse reduced to what Redis needs to count it.

    `window_key` is its live window bucket, `keys.window_key(tag, hour, tenant)` with
    the tag of its dedupe record (`keys.tag_of_dedupe_key`); `dedupe_key` is its v1
    key, only read (`v1_key`). A pulse with an id, or alone in its message, has a
    `fingerprint` (`keys.id_fingerprint`, `keys.place_fingerprint`) looked up in the id
    index; any other pulse without id has a `ledger` (`keys.message_ledger_key`, same
    tag) and its `bit` there (its index). A pulse with both has its ledger only read:
    how the previous release recorded a message of one pulse. A pulse with an id
    carries its `tenant_and_id`, and on a single node no `dedupe_key`: made only when
    sent, while the script still reads v1 keys (1 µs a pulse otherwise spent).
    """

    dedupe_key: bytes
    window_key: str
    group: bytes
    micro_units: int
    ledger: bytes = b""
    bit: int = 0
    fingerprint: bytes = b""
    tenant_and_id: tuple[str, str] | None = None

    def v1_key(self) -> bytes:
        """Its v1 dedupe key."""
        if self.dedupe_key or self.tenant_and_id is None:
            return self.dedupe_key
        return keys.dedupe_key_for_id(*self.tenant_and_id)


def pulse_with_id(
    tenant: str, pulse_id: str, window_key: str, group: bytes, micro_units: int
) -> CountablePulse:
    """The countable pulse of `tenant` with id `pulse_id` (its fingerprint; its v1 key
    only where its tag comes from it, a cluster)."""
    return CountablePulse(
        b"" if keys.one_tag() else keys.dedupe_key_for_id(tenant, pulse_id),
        window_key,
        group,
        micro_units,
        fingerprint=keys.id_fingerprint(tenant, pulse_id),
        tenant_and_id=(tenant, pulse_id),
    )


class PulseCounter:
    """Applies validated pulses to the Redis hour windows through the Lua script."""

    def __init__(
        self,
        redis: Redis,
        dedupe_horizon_seconds: int,
        chunk_size: int,
        set_entries: int | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> None:
        """`set_entries`: the Redis `set-max-intset-entries` the id index sizes its
        partitions for; read from Redis on first use when not given.
        `wait_replicas`: after each call, WAIT until that many replicas of the master
        have it, at most `wait_timeout_ms` (0: no WAIT, one round trip a chunk)."""
        self._redis = redis
        self._script = redis.register_script(INGEST_SCRIPT)
        self._horizon = dedupe_horizon_seconds
        self._bucket_seconds = keys.id_bucket_seconds(dedupe_horizon_seconds)
        self._chunk_size = chunk_size
        self._set_entries = set_entries
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        # Each node's calls in one pipeline to it: on a cluster, and wherever WAIT must
        # follow the writes on their connection.
        self._per_node = is_cluster(redis) or wait_replicas > 0
        # v1 records exist only on a single node (a cluster install never had v1).
        self._single_node = not is_cluster(redis)
        self._legacy_marked: set[str] = set()
        # Per tag, what the script last said it needs of the previous releases' records
        # (see INGEST_SCRIPT's ARGV); until it has said, all of them.
        self._needs: dict[str, str] = {}

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
        if self._set_entries is None:
            self._set_entries = set_intset_entries(self._redis)
        per_tag = _per_tag(pulses)
        if self._single_node:
            for tag, _ in per_tag:
                if tag not in self._legacy_marked:
                    mark_legacy_horizon(self._redis, tag, self._horizon)
                    self._legacy_marked.add(tag)
        chunks = [
            (tag, of_tag[start : start + self._chunk_size])
            for tag, of_tag in per_tag
            for start in range(0, len(of_tag), self._chunk_size)
        ]
        try:
            return self._count_chunks(chunks)
        except OutOfMemoryError:
            raise
        except ResponseError as exc:
            if is_out_of_memory(exc):
                raise OutOfMemoryError(str(exc)) from exc
            raise

    def _count_chunks(self, chunks: list[tuple[str, Sequence[CountablePulse]]]) -> int:
        """Count each chunk; a chunk the script refused for lack of the previous
        releases' records (it counted nothing) is sent again with them."""
        counted = 0
        for _ in range(3):
            calls = [self._script_arguments(tag, chunk) for tag, chunk in chunks]
            if self._per_node:
                replies = self._count_per_node(calls)
            else:  # a single node, no WAIT: one round trip a chunk, nothing more
                replies = [
                    self._script(keys=script_keys, args=script_args) for script_keys, script_args in calls
                ]
            refused = []
            for (tag, chunk), (new, needs) in zip(chunks, replies, strict=True):
                self._needs[tag] = needs.decode() if isinstance(needs, bytes) else str(needs)
                if int(new) < 0:
                    refused.append((tag, chunk))
                else:
                    counted += int(new)
            if not refused:
                return counted
            chunks = refused
        raise RuntimeError("the ingest script kept asking for records of the previous releases")

    def _count_per_node(self, calls: list[tuple[list[bytes | str], list[bytes | int | str]]]) -> list:
        """The calls of each master in one pipeline to it, then WAIT when asked; the
        replies in the calls' order.

        On a cluster a batch is a call per tag (16): one round trip per master, not per
        tag. WAIT waits for the writes of its own connection, hence the pipeline: it
        follows the master's calls on their connection. Fewer replicas than asked raises
        ReplicaWaitTimeout: the writes stand on the master and may be lost with it, so
        the batch is retried rather than acked; the retry finds its pulses counted
        (nothing twice) and waits again.
        """
        by_node: dict[Redis, list[int]] = {}
        for number, call in enumerate(calls):
            by_node.setdefault(node_for_key(self._redis, call[0][0]), []).append(number)
        replies: list = [None] * len(calls)
        for node, numbers in by_node.items():
            try:
                node_replies = self._node_pipeline(node, [calls[number] for number in numbers])
            except (ConnectionError, AskError, ClusterDownError, TryAgainError):
                # The master died or its slots moved (a failover, a resharding): the retry
                # asks the node holding them then.
                refresh_topology(self._redis)
                raise
            if self._wait_replicas and node_replies.pop() < self._wait_replicas:
                raise ReplicaWaitTimeout(
                    f"fewer than {self._wait_replicas} replica(s) confirmed a batch's write within "
                    f"{self._wait_timeout_ms} ms (REDIS_WAIT_REPLICAS, REDIS_WAIT_TIMEOUT_MS): retried, not acked"
                )
            for number, reply in zip(numbers, node_replies, strict=True):
                replies[number] = reply
        return replies

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
        """KEYS and ARGV of one script call (layout described above INGEST_SCRIPT): the
        previous releases' records only as the script last said it needs them."""
        needs = self._needs.get(tag, "vh")
        with_v1 = self._single_node and "v" in needs
        with_fields = "h" in needs
        windows: dict[str, int] = {}
        ledgers: dict[bytes, int] = {}
        cells: dict[tuple[str, bytes], int] = {}
        cell_args: list[bytes | int] = []
        fingerprinted_keys: list[bytes] = []
        fingerprinted_args: list[bytes | int | str] = []
        ledger_keys: list[bytes] = []
        ledger_args: list[bytes | int] = []
        field_start = keys.ID_SELECTOR_BYTES
        # Those with a fingerprint first, sorted by path (stable: of two pulses with one
        # id, the first still counts), so the script finds a partition's ids side by side.
        with_members = sorted(
            ((keys.id_index_members(pulse.fingerprint), pulse) for pulse in chunk if pulse.fingerprint),
            key=_path_of,
        )
        ordered: list[tuple[tuple[str, int, int] | None, CountablePulse]] = [
            *with_members,
            *((None, pulse) for pulse in chunk if not pulse.fingerprint),
        ]
        for members, pulse in ordered:
            cell = cells.get((pulse.window_key, pulse.group))
            if cell is None:
                window = windows.setdefault(pulse.window_key, len(windows) + 1)
                cell = cells[(pulse.window_key, pulse.group)] = len(cells) + 1
                cell_args += (window, pulse.group)
            fingerprint = pulse.fingerprint
            if members is not None:
                path, wide, narrow = members
                fingerprinted_args += (cell, pulse.micro_units, path, wide, narrow)
                if with_fields:
                    fingerprinted_args.append(fingerprint[field_start:])
                if with_v1:
                    ledger = ledgers.setdefault(pulse.ledger, len(ledgers) + 1) if pulse.ledger else 0
                    fingerprinted_args += (ledger, pulse.bit)
                    fingerprinted_keys.append(pulse.v1_key())
            elif pulse.ledger:
                ledger = ledgers.setdefault(pulse.ledger, len(ledgers) + 1)
                ledger_args += (cell, pulse.micro_units, ledger, pulse.bit)
                ledger_keys.append(pulse.dedupe_key)
            else:
                raise ValueError(f"a pulse with neither fingerprint nor ledger: {pulse!r}")
        script_keys: list[bytes | str] = [keys.registry_key(tag), keys.id_index_key(tag), *windows, *ledgers]
        if with_v1:
            script_keys += fingerprinted_keys + ledger_keys
        live_fields = [keys.live_field_of_window(window) for window in windows]
        header: list[bytes | int | str] = [
            self._horizon,
            len(windows),
            len(cells),
            len(ledgers),
            self._bucket_seconds,
            self._set_entries or DEFAULT_SET_ENTRIES,
            ("v" if with_v1 else "") + ("h" if with_fields else "") + ("" if self._single_node else "c"),
            len(fingerprinted_args) // (5 + with_fields + 2 * with_v1),
        ]
        return script_keys, [*header, *cell_args, *fingerprinted_args, *ledger_args, *live_fields]


def _path_of(item: tuple[tuple[str, int, int], CountablePulse]) -> str:
    return item[0][0]


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
