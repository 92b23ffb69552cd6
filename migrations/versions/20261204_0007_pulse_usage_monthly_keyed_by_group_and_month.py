"""pulse_usage_monthly keyed by its group and month: one B-tree, half-full pages, a BRIN on month_start.

Revision 0006's triggers upsert every flush's deltas into pulse_usage_monthly, and
the first flush fell to 24,544 rows/s with them (from ~40,000). The table had four
B-trees for one lookup key: a surrogate `id` primary key nothing reads, the unique
key the upsert needs, (tenant, month_start) and (month_start). Now:

- the unique key (tenant, product_sku, use_unity, month_start) is the primary key,
  the only B-tree: a new monthly row writes one index entry instead of four, and
  one tenant's months are a range of it (tenant leads);
- fillfactor 50: adding to an existing monthly row (every flush of a month but its
  first hour's) finds room on its own page, a HOT update writing no index entry;
- a BRIN index on month_start answers the platform's month (month_start alone):
  rows are written month after month (a month's rows appear with its first flush,
  into fresh pages, since half-full pages take no inserts), so each month is a few
  block ranges; a BRIN entry is written per block range, not per row.

The table is rebuilt, its rows copied month by month (the order the BRIN needs),
under the lock of pulse_usage that 0006's backfill took: no flush writes, so no
trigger fires, between the copy and the swap. The triggers name the table, not its
oid: they write into the rebuilt one. The downgrade rebuilds 0006's layout.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "pulse_usage_monthly"
REBUILT = f"{TABLE}_rebuilt"
KEY = ("tenant", "product_sku", "use_unity", "month_start")
FIELDS = ", ".join((*KEY, "used_amount", "pulse_count"))
# Half of each page left free for the updates of its rows (HOT: no index entry).
FILLFACTOR = 50
BRIN = "ix_pulse_usage_monthly_month_start_brin"
UNIQUE_0006 = "uq_pulse_usage_monthly_tenant_product_sku_use_unity_month_start"


def _sums_columns() -> list[sa.Column]:
    return [
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("product_sku", sa.String(128), nullable=False),
        sa.Column("use_unity", sa.String(32), nullable=False),
        sa.Column("month_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_amount", sa.Numeric(38, 6), nullable=False),
        sa.Column("pulse_count", sa.BigInteger(), nullable=False),
    ]


def _swap(order: str) -> None:
    """Copy the rows into REBUILT in `order`, then put it in the table's place."""
    op.execute("LOCK TABLE pulse_usage IN SHARE ROW EXCLUSIVE MODE")
    op.execute(f"INSERT INTO {REBUILT} ({FIELDS}) SELECT {FIELDS} FROM {TABLE} ORDER BY {order}")
    op.drop_table(TABLE)
    op.rename_table(REBUILT, TABLE)


def upgrade() -> None:
    op.create_table(REBUILT, *_sums_columns())
    op.execute(f"ALTER TABLE {REBUILT} SET (fillfactor = {FILLFACTOR})")
    _swap("month_start, tenant, product_sku, use_unity")
    # Built once the rows are in: faster than an index kept during the copy.
    op.create_primary_key(op.f(f"pk_{TABLE}"), TABLE, list(KEY))
    op.create_index(BRIN, TABLE, ["month_start"], postgresql_using="brin")
    op.execute(f"ANALYZE {TABLE}")


def downgrade() -> None:
    op.create_table(
        REBUILT,
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        *_sums_columns(),
    )
    _swap(", ".join(KEY))
    op.execute(f"ALTER SEQUENCE {REBUILT}_id_seq RENAME TO {TABLE}_id_seq")
    op.create_primary_key(op.f(f"pk_{TABLE}"), TABLE, ["id"])
    op.create_unique_constraint(op.f(UNIQUE_0006), TABLE, list(KEY))
    op.create_index("ix_pulse_usage_monthly_tenant_month_start", TABLE, ["tenant", "month_start"])
    op.create_index("ix_pulse_usage_monthly_month_start", TABLE, ["month_start"])
    op.execute(f"ANALYZE {TABLE}")
