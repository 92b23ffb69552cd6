"""Counting valid pulses into Redis hour windows, each at most once (guarantees 2, 3).

A batch is applied by one Lua script, atomically: for each pulse, `SET dedupe-key NX
EX horizon` and only if that set the key, `HINCRBY` its window hash. A redelivered
message therefore finds its dedupe keys set and counts nothing twice, and a crash can
never leave a pulse deduped but not counted (the script runs whole or not at all).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from redis import Redis

from ingestor.pulses import keys

# KEYS[1]: the pending-windows set; then, per pulse, its dedupe key and window key.
# ARGV[1]: dedupe horizon in seconds; then, per pulse, its group and micro-units.
# Returns how many pulses were counted (the others were duplicates).
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

local horizon = ARGV[1]
local counted = 0
local announced = {}
for i = 2, #KEYS, 2 do
  if redis.call('SET', KEYS[i], 1, 'NX', 'EX', horizon) then
    local window = KEYS[i + 1]
    local group = ARGV[i]
    add_amount(window, group, ARGV[i + 1])
    redis.call('HINCRBY', window, 'n|' .. group, 1)
    if not announced[window] then
      redis.call('SADD', KEYS[1], window)
      announced[window] = true
    end
    counted = counted + 1
  end
end
return counted
"""


class CountablePulse(NamedTuple):
    """A validated pulse reduced to what Redis needs to count it."""

    dedupe_key: bytes
    window_key: str
    group: bytes
    micro_units: int


class PulseCounter:
    """Applies validated pulses to the Redis hour windows through the Lua script."""

    def __init__(self, redis: Redis, dedupe_horizon_seconds: int, chunk_size: int) -> None:
        self._script = redis.register_script(INGEST_SCRIPT)
        self._horizon = dedupe_horizon_seconds
        self._chunk_size = chunk_size

    def count(self, pulses: Sequence[CountablePulse]) -> int:
        """Count `pulses` once each; return how many were new (not duplicates).

        Large batches go in chunks so one call never holds Redis for long; each chunk
        is idempotent, so a failure between chunks is safe to retry whole.
        """
        counted = 0
        for start in range(0, len(pulses), self._chunk_size):
            chunk = pulses[start : start + self._chunk_size]
            script_keys: list[bytes | str] = [keys.PENDING_WINDOWS]
            script_args: list[bytes | int] = [self._horizon]
            for pulse in chunk:
                script_keys += (pulse.dedupe_key, pulse.window_key)
                script_args += (pulse.group, pulse.micro_units)
            counted += int(self._script(keys=script_keys, args=script_args))
        return counted
