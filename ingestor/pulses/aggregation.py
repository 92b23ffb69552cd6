"""Counting valid pulses into Redis hour windows, each at most once (guarantees 2, 3).

A batch is applied by one Lua script per tag, atomically. A pulse with an id: `SET
dedupe-key NX EX horizon`, and only if that set the key it counts. A pulse without id:
it counts only if its bit in its message's ledger (a bitmap, `keys.message_ledger_key`)
is clear and its v1 dedupe key is absent, and the script sets the bit; each ledger
then expires a horizon after this call. Counted pulses `HINCRBY` their window bucket.
A redelivered message therefore finds its dedupe keys set and counts nothing twice,
and a crash can never leave a pulse deduped but not counted (the script runs whole or
not at all). The script also registers each hour that received counts in the tag's
registry (`w:<h>`), bumping its version when the hour is new there, so a flush finds
the hour without a SCAN and a pending read sees that the set of hours changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from redis import Redis
from redis.exceptions import OutOfMemoryError, ResponseError

from ingestor.pulses import keys
from ingestor.redis_store import is_out_of_memory

# The batch is sent compactly: each distinct (window, group) "cell" once, then per
# pulse only its dedupe key, its cell number and its micro-units.
# KEYS: the tag's registry, the W distinct window bucket keys, the L distinct message
#       ledgers, then one dedupe key per pulse (for a pulse without id, its v1 key).
# ARGV: horizon, W, C, L, then C cells as (window number, group), then per pulse
#       (cell number, micro-units, ledger number or 0 for a pulse with id, its bit),
#       then per window its registry field `w:<hour>`.
# Returns how many pulses were counted (the others were duplicates).
#
# Per pulse the script runs one command, the SET NX, or (without id) GETBIT, EXISTS
# and SETBIT. The EXISTS honours v1 keys; it can go one horizon after the upgrade. Counts and amounts are summed per
# cell in Lua and written with one HINCRBY each at the end: Lua numbers are doubles,
# exact for integers below 2^53, so a cell's running sum stays in Lua only while it is
# below 2^52; a pulse that would take it further is added by HINCRBY from its string.
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
local horizon = ARGV[1]
local n_windows = tonumber(ARGV[2])
local n_cells = tonumber(ARGV[3])
local n_ledgers = tonumber(ARGV[4])
local first_key = 2 + n_windows + n_ledgers
local first_arg = 5 + 2 * n_cells

local function cell_window(cell) return KEYS[1 + tonumber(ARGV[3 + 2 * cell])] end
local function cell_group(cell) return ARGV[4 + 2 * cell] end

-- Whether a pulse is new, marking it seen: by its id's key, or by its bit in a ledger.
local function first_time(key, ledger, bit)
  if ledger == 0 then return redis.call('SET', key, 1, 'NX', 'EX', horizon) end
  local ledger_key = KEYS[1 + n_windows + ledger]
  if redis.call('GETBIT', ledger_key, bit) == 1 or redis.call('EXISTS', key) == 1 then return false end
  redis.call('SETBIT', ledger_key, bit, 1)
  return true
end

local counts, sums = {}, {}
local counted = 0
for k = first_key, #KEYS do
  local i = first_arg + 4 * (k - first_key)
  if first_time(KEYS[k], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])) then
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
-- A ledger lives a horizon after its message's last count (no-op when nothing set it).
for ledger = 1, n_ledgers do redis.call('EXPIRE', KEYS[1 + n_windows + ledger], horizon) end
-- Each hour that received counts is registered; a new hour is a change readers must see.
local first_live_field = #ARGV - n_windows
local registered = {}
for cell, _ in pairs(counts) do
  local field = ARGV[first_live_field + tonumber(ARGV[3 + 2 * cell])]
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
    the tag of its dedupe record (`keys.tag_of_dedupe_key`). A pulse without id has a
    `ledger` (`keys.message_ledger_key`, same tag) and its `bit` there (its index); its
    `dedupe_key` is then its v1 key, only read.
    """

    dedupe_key: bytes
    window_key: str
    group: bytes
    micro_units: int
    ledger: bytes = b""
    bit: int = 0


class PulseCounter:
    """Applies validated pulses to the Redis hour windows through the Lua script."""

    def __init__(self, redis: Redis, dedupe_horizon_seconds: int, chunk_size: int) -> None:
        self._script = redis.register_script(INGEST_SCRIPT)
        self._horizon = dedupe_horizon_seconds
        self._chunk_size = chunk_size

    def count(self, pulses: Sequence[CountablePulse]) -> int:
        """Count `pulses` once each; return how many were new (not duplicates).

        Pulses go in one call per tag (every key of a call in one slot), large batches
        in chunks so one call never holds Redis for long; each chunk is idempotent, so
        a failure between chunks is safe to retry whole.

        Redis refusing a chunk for memory raises `OutOfMemoryError`, whichever form the
        refusal took (Redis 7 passes the OOM reply on; earlier versions wrap it in a
        script error), so that callers hold the batch instead of dead-lettering it.
        """
        counted = 0
        for tag, of_tag in _per_tag(pulses):
            for start in range(0, len(of_tag), self._chunk_size):
                counted += self._count_chunk(tag, of_tag[start : start + self._chunk_size])
        return counted

    def _count_chunk(self, tag: str, chunk: Sequence[CountablePulse]) -> int:
        script_keys, script_args = self._script_arguments(tag, chunk)
        try:
            return int(self._script(keys=script_keys, args=script_args))
        except OutOfMemoryError:
            raise
        except ResponseError as exc:
            if is_out_of_memory(exc):
                raise OutOfMemoryError(str(exc)) from exc
            raise

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
        for pulse in chunk:
            cell = cells.get((pulse.window_key, pulse.group))
            if cell is None:
                window = windows.setdefault(pulse.window_key, len(windows) + 1)
                cell = cells[(pulse.window_key, pulse.group)] = len(cells) + 1
                cell_args += (window, pulse.group)
            ledger = ledgers.setdefault(pulse.ledger, len(ledgers) + 1) if pulse.ledger else 0
            dedupe_keys.append(pulse.dedupe_key)
            pulse_args += (cell, pulse.micro_units, ledger, pulse.bit)
        script_keys = [keys.registry_key(tag), *windows, *ledgers, *dedupe_keys]
        live_fields = [keys.live_field_of_window(window) for window in windows]
        counts = [self._horizon, len(windows), len(cells), len(ledgers)]
        return script_keys, [*counts, *cell_args, *pulse_args, *live_fields]


def _per_tag(pulses: Sequence[CountablePulse]) -> list[tuple[str, Sequence[CountablePulse]]]:
    """The pulses of each tag, in their order (one tag on a single node: no copy)."""
    if len(keys.SHARD_TAGS) == 1:
        return [(keys.SHARD_TAGS[0], pulses)] if pulses else []
    of_tag: dict[str, list[CountablePulse]] = {}
    for pulse in pulses:
        of_tag.setdefault(keys.tag_of_key(pulse.window_key), []).append(pulse)
    return list(of_tag.items())
