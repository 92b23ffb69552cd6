"""An independent ledger of what the sums must be, computed with Decimal in the test."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from ingestor.database import Database
from tests.support.pulses import MISSING, pulse

Group = tuple[str, str, str, datetime]


class Ledger:
    """Expected (amount, count) per (tenant, sku, unit, hour), kept by the test alone."""

    def __init__(self) -> None:
        self.sums: dict[Group, list[Any]] = defaultdict(lambda: [Decimal(0), 0])

    def add(self, tenant: str, sku: str, unit: str, hour: datetime, amount: str | Decimal) -> None:
        entry = self.sums[(tenant, sku, unit, hour.astimezone(UTC))]
        entry[0] += Decimal(amount)
        entry[1] += 1

    def expected(self) -> dict[Group, tuple[Decimal, int]]:
        return {group: (amount, count) for group, (amount, count) in self.sums.items()}

    def per_group(self) -> dict[tuple[str, str, str], Decimal]:
        """Expected amounts per (tenant, sku, unit), whatever their hour."""
        per_group: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
        for (tenant, sku, unit, _), (amount, _) in self.sums.items():
            per_group[(tenant, sku, unit)] += amount
        return dict(per_group)


def persisted_sums(database: Database) -> dict[Group, tuple[Decimal, int]]:
    """What PostgreSQL holds, in the ledger's shape."""
    with database.engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT tenant, product_sku, use_unity, window_start, used_amount, pulse_count FROM pulse_usage"
            )
        )
        return {(r[0], r[1], r[2], r[3].astimezone(UTC)): (r[4], r[5]) for r in rows}


def persisted_sums_per_group(database: Database) -> dict[tuple[str, str, str], Decimal]:
    """The persisted amounts per (tenant, sku, unit), whatever their hour."""
    per_group: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    for (tenant, sku, unit, _), (amount, _) in persisted_sums(database).items():
        per_group[(tenant, sku, unit)] += amount
    return dict(per_group)


def hour_ago(hours: int = 1) -> datetime:
    """The start of the UTC hour `hours` hours before the current one."""
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours)


def make_pulses(
    ledger: Ledger,
    count: int,
    *,
    prefix: str,
    hour: datetime,
    tenants: int = 3,
    with_ids: bool = True,
) -> list[dict[str, str]]:
    """`count` valid pulses of `hour` with varied amounts, each written in `ledger`.

    With ids `<prefix>-<i>` (unique per prefix) unless `with_ids` is false; amounts
    reach the micro-unit, so a pulse lost or counted twice changes every sum.
    """
    pulses = []
    for i in range(count):
        tenant = f"{prefix}:t{i % tenants}"
        amount = f"{i % 11}.{(i * 7919) % 10**6:06d}"
        pulse_id = f"{prefix}-{i}" if with_ids else MISSING
        pulses.append(
            pulse(
                tenant=tenant,
                product_sku="vm",
                use_unity="hour",
                used_amount=amount,
                timestamp=hour,
                id=pulse_id,
            )
        )
        ledger.add(tenant, "vm", "hour", hour, amount)
    return pulses


Month = tuple[str, str, str, datetime]


def hourly_sums_by_month(connection: Any) -> dict[Month, tuple[Decimal, int]]:
    """pulse_usage grouped by UTC month, in SQL over the hourly rows (what the rollup must hold)."""
    rows = connection.execute(
        text(
            "SELECT tenant, product_sku, use_unity,"
            " date_trunc('month', window_start AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',"
            " sum(used_amount), sum(pulse_count) FROM pulse_usage GROUP BY 1, 2, 3, 4"
        )
    )
    return {(r[0], r[1], r[2], r[3].astimezone(UTC)): (r[4], r[5]) for r in rows}


def monthly_rollup(connection: Any) -> dict[Month, tuple[Decimal, int]]:
    """What pulse_usage_monthly holds, in the shape of `hourly_sums_by_month`."""
    rows = connection.execute(
        text(
            "SELECT tenant, product_sku, use_unity, month_start, used_amount, pulse_count"
            " FROM pulse_usage_monthly"
        )
    )
    return {(r[0], r[1], r[2], r[3].astimezone(UTC)): (r[4], r[5]) for r in rows}
