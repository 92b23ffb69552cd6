"""Fake pulses for demos and load: plausible tenants, products and exact amounts.

Generation is deterministic per (job, worker, sequence number): a populate task that
is redelivered after a crash regenerates the very same pulses, ids included, so the
dedupe keys make the redelivery count nothing twice.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

TENANTS = [f"tenant-{n:03d}" for n in range(50)]
PRODUCTS = [
    ("vm.small", "vCPU-hour"),
    ("vm.large", "vCPU-hour"),
    ("object-storage", "GB"),
    ("block-storage", "GB"),
    ("network.egress", "KB/sec"),
    ("dbaas.postgres", "instance-hour"),
    ("functions", "invocation"),
]


def fake_pulses(job_id: str, worker_index: int, start: int, count: int) -> list[dict[str, Any]]:
    """Pulses number `start` to `start + count - 1` of one populate worker."""
    now = datetime.now(UTC).isoformat()
    pulses = []
    for sequence in range(start, start + count):
        rng = random.Random(f"{job_id}:{worker_index}:{sequence}")
        sku, unit = rng.choice(PRODUCTS)
        amount = Decimal(rng.randrange(0, 10**9)).scaleb(-6)  # up to 999.999999, exact
        pulses.append(
            {
                "id": f"populate:{job_id}:{worker_index}:{sequence}",
                "tenant": rng.choice(TENANTS),
                "product_sku": sku,
                "use_unity": unit,
                "used_amount": format(amount, "f"),
                "timestamp": now,
            }
        )
    return pulses
