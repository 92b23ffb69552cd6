"""pulse_usage_monthly: the hourly sums rolled up per UTC month, kept by triggers on pulse_usage.

GET /api/v1/usage over the whole platform's month reads every hourly row of the
month (3.3 million of the bench's 10 million): seconds, growing with the rows. A
monthly row per (tenant, product_sku, use_unity, month_start) holds the same sums
for the whole UTC month: the month is then its distinct groups (about 32,000 on the
bench's rows), and `query_usage` adds or subtracts the hourly rows at the edges of
windows that are not whole UTC months (docs/DESIGN.md, "Usage at scale").

Maintained by statement-level AFTER INSERT / UPDATE / DELETE / TRUNCATE triggers on pulse_usage
with transition tables: every writer (the first flush's COPY, the upsert, the late
amounts' UPDATE, the legacy path, anything written later) adds its statement's
deltas, new rows minus old rows, in the writer's own transaction. A batch adds to
the rollup exactly when it adds to the hourly rows (its flush_batch row commits with
both), and a REPEATABLE READ snapshot sees the hourly rows and the rollup of the
same batches. The deltas are upserted in key order, so two statements touching the
same monthly rows lock them in the same order: one waits, neither deadlocks.
Amounts stay NUMERIC throughout: additions and subtractions, no rounding.

The indexes do not include the amounts, so adding to a monthly row changes no
indexed column and can be a HOT update (no index entry written).

The backfill and the triggers are created under one SHARE ROW EXCLUSIVE lock of
pulse_usage: no flush writes between the backfill's read and the triggers' start
(flushes wait for the backfill instead: 14.6 s on 10 million rows, 95,208 monthly rows).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONTH_OF_WINDOW = "date_trunc('month', window_start AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
KEY = "tenant, product_sku, use_unity, month_start"


def _add_to_monthly(deltas: str) -> str:
    """The upsert adding `deltas` (rows shaped like pulse_usage) to the monthly rows, in key order."""
    return f"""
    INSERT INTO pulse_usage_monthly ({KEY}, used_amount, pulse_count)
    SELECT tenant, product_sku, use_unity, {MONTH_OF_WINDOW} AS month_start,
           sum(used_amount), sum(pulse_count)
    FROM ({deltas}) AS deltas
    GROUP BY tenant, product_sku, use_unity, month_start
    HAVING sum(used_amount) <> 0 OR sum(pulse_count) <> 0
    ORDER BY tenant, product_sku, use_unity, month_start
    ON CONFLICT ({KEY}) DO UPDATE SET
        used_amount = pulse_usage_monthly.used_amount + excluded.used_amount,
        pulse_count = pulse_usage_monthly.pulse_count + excluded.pulse_count;
    """


# Rows whose hourly rows are all gone (deleted) leave the rollup, as they leave the
# GROUP BY of pulse_usage it mirrors.
DROP_EMPTY_MONTHS = f"""
    DELETE FROM pulse_usage_monthly AS monthly
    USING (SELECT DISTINCT tenant, product_sku, use_unity, {MONTH_OF_WINDOW} AS month_start
           FROM old_rows) AS touched
    WHERE monthly.tenant = touched.tenant AND monthly.product_sku = touched.product_sku
      AND monthly.use_unity = touched.use_unity AND monthly.month_start = touched.month_start
      AND monthly.pulse_count = 0;
"""
COLUMNS = "tenant, product_sku, use_unity, window_start"
INSERTED = f"SELECT {COLUMNS}, used_amount, pulse_count FROM new_rows"
DELETED = f"SELECT {COLUMNS}, -used_amount AS used_amount, -pulse_count AS pulse_count FROM old_rows"

# event → (function body, REFERENCING clause or None)
TRIGGERS: dict[str, tuple[str, str | None]] = {
    "insert": (_add_to_monthly(INSERTED), "NEW TABLE AS new_rows"),
    "update": (
        _add_to_monthly(f"{INSERTED} UNION ALL {DELETED}") + DROP_EMPTY_MONTHS,
        "NEW TABLE AS new_rows OLD TABLE AS old_rows",
    ),
    "delete": (_add_to_monthly(DELETED) + DROP_EMPTY_MONTHS, "OLD TABLE AS old_rows"),
    # TRUNCATE fires no DELETE trigger (and has no transition table): it empties both.
    "truncate": ("TRUNCATE pulse_usage_monthly;", None),
}


def _function(event: str) -> str:
    return f"pulse_usage_monthly_after_{event}"


def upgrade() -> None:
    op.create_table(
        "pulse_usage_monthly",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("product_sku", sa.String(128), nullable=False),
        sa.Column("use_unity", sa.String(32), nullable=False),
        sa.Column("month_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_amount", sa.Numeric(38, 6), nullable=False),
        sa.Column("pulse_count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pulse_usage_monthly")),
        sa.UniqueConstraint(
            "tenant",
            "product_sku",
            "use_unity",
            "month_start",
            name=op.f("uq_pulse_usage_monthly_tenant_product_sku_use_unity_month_start"),
        ),
    )
    # One tenant's months, and the whole platform's month.
    op.create_index(
        "ix_pulse_usage_monthly_tenant_month_start", "pulse_usage_monthly", ["tenant", "month_start"]
    )
    op.create_index("ix_pulse_usage_monthly_month_start", "pulse_usage_monthly", ["month_start"])
    op.execute("LOCK TABLE pulse_usage IN SHARE ROW EXCLUSIVE MODE")
    for event, (body, referencing) in TRIGGERS.items():
        op.execute(
            f"CREATE FUNCTION {_function(event)}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            f"BEGIN\n{body}\nRETURN NULL;\nEND\n$$"
        )
        op.execute(
            f"CREATE TRIGGER {_function(event)} AFTER {event.upper()} ON pulse_usage"
            + (f" REFERENCING {referencing}" if referencing else "")
            + f" FOR EACH STATEMENT EXECUTE FUNCTION {_function(event)}()"
        )
    op.execute(
        f"INSERT INTO pulse_usage_monthly ({KEY}, used_amount, pulse_count)"
        f" SELECT tenant, product_sku, use_unity, {MONTH_OF_WINDOW} AS month_start,"
        " sum(used_amount), sum(pulse_count) FROM pulse_usage"
        " GROUP BY tenant, product_sku, use_unity, month_start"
        " ORDER BY tenant, product_sku, use_unity, month_start"
    )
    op.execute("ANALYZE pulse_usage_monthly")


def downgrade() -> None:
    for event in TRIGGERS:
        op.execute(f"DROP TRIGGER {_function(event)} ON pulse_usage")
        op.execute(f"DROP FUNCTION {_function(event)}()")
    op.drop_table("pulse_usage_monthly")
