"""Pulses the bench counts straight into Redis with the ingest path's Lua script."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from ingestor.pulses import keys
from ingestor.pulses.aggregation import CountablePulse

# Pulses per script call: the workers' chunks are of this order.
CHUNK = 5000


def one_group_pulse(hour: datetime, scope: str, g: int, tenant: str, sku: str = "vm.small") -> CountablePulse:
    """A pulse without id of `hour`, at position `g` of message `scope`: its bit in the
    message's ledger, as a worker counts it."""
    dedupe_key, scope_digest, place = keys.position_in_message(scope, g)
    tag = keys.tag_of_dedupe_key(dedupe_key)
    window = keys.window_key(tag, keys.hour_of(hour), tenant)
    ledger = keys.message_ledger_key(tag, scope_digest)
    return CountablePulse(
        dedupe_key, window, keys.group_field(tenant, sku, "vCPU-hour"), 1_000_000 + g, ledger, place
    )


def count_pending_groups(services, hours: Sequence[datetime], groups: int) -> int:
    """`groups` pending groups spread evenly over `hours`: tenants `tenant-<n>` (groups / 10
    of them), 5 SKUs each, counted by the ingest script; the number of tenants."""
    tenants = groups // 10
    per_hour = groups // len(hours)
    pulses = [
        one_group_pulse(at, f"pending-{h}", g, f"tenant-{g % tenants}", f"sku-{g // tenants}")
        for h, at in enumerate(hours)
        for g in range(per_hour)
    ]
    for start in range(0, len(pulses), CHUNK):
        services.counter.count(pulses[start : start + CHUNK])
    return tenants
