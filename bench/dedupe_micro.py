"""Redis time per pulse with an id, in the id index's steady state, on a private Redis.

    .venv/bin/python -m bench.dedupe_micro [--port 7201] [--horizon 4] [--rate 5000] [--rounds 2]

Starts its own redis-server (port 7201 by default, Redis's defaults for the index's
`set-max-intset-entries`, 512), so the shared server's load is not in the figure. Each variant counts
new ids at a steady rate for three horizons (short: buckets of half a horizon, so
every live bucket is sized from a predecessor after two), and reports over the last one
the script's Redis time per pulse (`INFO commandstats` around each call of 1000: the
lower quartile of the calls, as other processes on the cores only add time) and `MEMORY
USAGE` of the index over the ids it holds (bytes per id held). Variants run side by
side, interleaved over `--rounds` (`--only` picks them; the default is v1, b4 and
current): "v1 key per id" is the release before the id index (one `SET NX EX` key per
id), "legacy" this script during an upgrade's first horizon, the others this script
with other bucket lengths or partition fills. (The release before's hash index took
other arguments: its figures, 8.9 µs and 15.2 B/id, are in the README.)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from redis import Redis

from ingestor.pulses import keys
from ingestor.pulses.aggregation import CountablePulse, PulseCounter, pulse_with_id

TAG = keys.SHARD_TAGS[0]
GROUP = keys.group_field("tenant", "vm.small", "vCPU-hour")

# The release before the id index, reduced to its dedupe: one key per id, SET NX EX.
V1_SCRIPT = """
local counted = 0
for k = 3, #KEYS do
  if redis.call('SET', KEYS[k], 1, 'NX', 'EX', ARGV[1]) then counted = counted + 1 end
end
redis.call('HINCRBY', KEYS[2], 'n|' .. ARGV[2], counted)
return counted
"""


@dataclass(frozen=True)
class Variant:
    """One way of counting: a name, and how to build its counter on a Redis."""

    name: str
    make: Callable[[Redis, int], Callable[[list[CountablePulse]], int]]


def _current(
    legacy_reads: bool,
    set_entries: int | None = None,
    buckets_per_horizon: int | None = None,
) -> Callable[[Redis, int], Callable[[list[CountablePulse]], int]]:
    def make(redis: Redis, horizon: int) -> Callable[[list[CountablePulse]], int]:
        counter = PulseCounter(redis, horizon, chunk_size=1000, set_entries=set_entries)
        if buckets_per_horizon:
            counter._bucket_seconds = max(1, -(-horizon // buckets_per_horizon))
        if legacy_reads:  # as just after an upgrade: v1 keys may exist for a horizon
            redis.hset(keys.id_index_key(TAG), keys.ID_INDEX_LEGACY_FIELD, int(redis.time()[0]) + 3600)
        return counter.count

    return make


def _v1(redis: Redis, horizon: int) -> Callable[[list[CountablePulse]], int]:
    script = redis.register_script(V1_SCRIPT)

    def count(pulses: list[CountablePulse]) -> int:
        return int(
            script(
                keys=[keys.registry_key(TAG), pulses[0].window_key, *(p.v1_key() for p in pulses)],
                args=[horizon, GROUP],
            )
        )

    return count


VARIANTS = {
    "v1": Variant("v1 key per id", _v1),
    "legacy": Variant("v1 keys read (an upgrade's first horizon)", _current(legacy_reads=True)),
    "b4": Variant("buckets of H/4", _current(legacy_reads=False, buckets_per_horizon=4)),
    "b3": Variant("buckets of H/3", _current(legacy_reads=False, buckets_per_horizon=3)),
    "current": Variant("this release: buckets of H/2", _current(legacy_reads=False)),
    "fill14": Variant("buckets of H/2, partitions filled to 1/4", _current(False, set_entries=256)),
}


def _pulses(n: int, window: str) -> list[CountablePulse]:
    return [pulse_with_id("tenant", str(uuid.uuid4()), window, GROUP, 1) for _ in range(n)]


def _index_bytes_per_id(redis: Redis, horizon: int) -> float:
    index = keys.id_index_key(TAG)
    held = sum(
        redis.memory_usage(key, samples=0) or 0 for key in redis.scan_iter(match=index + "*", count=1000)
    )
    fields = redis.hgetall(index)
    now = int(redis.time()[0])
    # Buckets whose partitions have not expired (the script forgets the others on its next call).
    ids = sum(
        int(fields[b"n" + name[1:]])
        for name, value in fields.items()
        if name.startswith(b"s") and int(value.split(b"|")[0]) + horizon > now
    )
    if not ids:  # v1: its d keys
        d_keys = list(redis.scan_iter(match="d*", count=1000))
        return sum(redis.memory_usage(key, samples=0) or 0 for key in d_keys) / max(1, len(d_keys))
    return held / ids


def run_variant(redis: Redis, variant: Variant, horizon: int, rate: int) -> tuple[float, float]:
    """(Redis usec per pulse of the script, bytes per id held) over the third horizon."""
    redis.flushdb()
    window = keys.window_key(TAG, keys.hour_of(datetime.now(UTC)), "tenant")
    count = variant.make(redis, horizon)
    chunk = 1000
    pulses = _pulses(3 * horizon * rate + chunk, window)
    started = time.monotonic()
    sent = 0
    reset = False
    while (elapsed := time.monotonic() - started) < 3 * horizon:
        if not reset and elapsed >= 2 * horizon:
            durations: list[int] = []
            reset = True
        if int(elapsed * rate) - sent >= chunk:
            if reset:
                before = _script_usec(redis)
            assert count(pulses[sent : sent + chunk]) == chunk
            if reset:
                durations.append(_script_usec(redis) - before)
            sent += chunk
        else:
            time.sleep(0.002)
    # Per call: the lower quartile leaves out the calls other processes took the core
    # from (they only add time), and keeps the spread of the index's states.
    return statistics.quantiles(durations, n=4)[0] / chunk, _index_bytes_per_id(redis, horizon)


def _script_usec(redis: Redis) -> int:
    stats = redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("usec", 0)) + int(
        stats.get("cmdstat_eval", {}).get("usec", 0)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=7201)
    parser.add_argument("--horizon", type=int, default=4, help="dedupe horizon (s)")
    parser.add_argument("--rate", type=int, default=5000, help="new ids per second")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), default=["v1", "b4", "current"])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        server = subprocess.Popen(
            ["redis-server", "--port", str(args.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", workdir, "--maxmemory-policy", "noeviction", "--latency-tracking", "no"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            redis = Redis(port=args.port)
            for _ in range(100):
                try:
                    redis.ping()
                    break
                except Exception:
                    time.sleep(0.05)
            results: dict[str, list[tuple[float, float]]] = {name: [] for name in args.only}
            for round_ in range(args.rounds):
                for name in args.only:
                    usec, per_id = run_variant(redis, VARIANTS[name], args.horizon, args.rate)
                    results[name].append((usec, per_id))
                    print(
                        f"round {round_ + 1} {VARIANTS[name].name}: {usec:.2f} µs/pulse, {per_id:.1f} B/id",
                        flush=True,
                    )
            print(
                f"\nhorizon {args.horizon} s, {args.rate:,} new ids/s, chunks of 1000: the least of "
                f"{args.rounds} rounds' lower quartiles of µs per pulse, the median B/id"
            )
            v1 = min(u for u, _ in results["v1"]) if "v1" in results else None
            for name in args.only:
                usec = min(u for u, _ in results[name])
                per_id = statistics.median(b for _, b in results[name])
                ratio = f", {usec / v1:.2f}x v1's time" if v1 else ""
                print(f"  {VARIANTS[name].name:40s} {usec:6.2f} µs/pulse  {per_id:6.1f} B/id held{ratio}")
        finally:
            server.terminate()
            server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
