"""pulse_usage: the (tenant, window_start, id) index covers the usage sums (INCLUDE sku, unit, amount, count).

GET /api/v1/usage for one tenant reads `tenant = ANY(...) AND window_start in
[from, to)` and sums used_amount and pulse_count by window (and SKU, unit). The
flush writes rows hour by hour, so one tenant's rows of a month are spread over
as many heap pages as it has rows: on 10 million rows (bench `--only usage`) the
index scan of the previous index read ~560 heap pages for a tenant with 185 rows
in the month, ~2,500 for one with 5,040, mostly from disk. Covering the columns the
sum reads makes it an index-only scan reading a few contiguous leaf pages (the
figures are in the commit and the README's performance table).

The new index has the previous one's key, (tenant, window_start, id), so it serves
everything the previous one did (GET /api/v1/pulses?tenant= walks it in
(window_start DESC, id DESC) order): it replaces it rather than sits beside it,
and the flush keeps maintaining one tenant index, not two.

Not indexed for the whole platform's month: with every row of the range read, an
index-only scan of (window_start, ...) and a parallel sequential scan both read
every row of the range; the month of 10 million rows stays seconds either way, the
case for a rollup (docs/DESIGN.md, "Usage at scale").

Built CONCURRENTLY: a plain CREATE INDEX holds off every flush (SHARE lock) for as
long as the build takes (37 s on 10 million rows on this 2-core machine). A
concurrent build that fails leaves an INVALID index: running the upgrade again
drops it first (IF EXISTS) and rebuilds.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COVERING = "ix_pulse_usage_tenant_window_start_id_covering"
PREVIOUS = "ix_pulse_usage_tenant_window_start_id"


def upgrade() -> None:
    # CONCURRENTLY cannot run inside a transaction block.
    with op.get_context().autocommit_block():
        op.drop_index(COVERING, table_name="pulse_usage", postgresql_concurrently=True, if_exists=True)
        op.create_index(
            COVERING,
            "pulse_usage",
            ["tenant", "window_start", "id"],
            postgresql_include=["product_sku", "use_unity", "used_amount", "pulse_count"],
            postgresql_concurrently=True,
        )
        op.drop_index(PREVIOUS, table_name="pulse_usage", postgresql_concurrently=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(PREVIOUS, table_name="pulse_usage", postgresql_concurrently=True, if_exists=True)
        op.create_index(
            PREVIOUS, "pulse_usage", ["tenant", "window_start", "id"], postgresql_concurrently=True
        )
        op.drop_index(COVERING, table_name="pulse_usage", postgresql_concurrently=True)
