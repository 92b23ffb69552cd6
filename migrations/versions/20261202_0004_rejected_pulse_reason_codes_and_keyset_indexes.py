"""rejected_pulse for GET /api/v1/rejected-pulses: reason codes stored and indexed, a newest-first keyset walk.

- `reason_codes`: the reason codes of `errors` (any field), so the API's `reason`
  filter finds a rare reason through a GIN index instead of reading every message of
  every row. Existing rows are filled by the same function new rows are written
  with, `ingestor.pulses.schema.rejection_codes`, in batches.
- (received_at, id): the API's order, (received_at DESC, id DESC), resumed after a
  cursor's (received_at, id). It replaces the index on received_at alone, a prefix
  of it (replay-rejected's `--since` still has one).
- (tenant, received_at, id): a producer reads its own tenant's rows, in that order.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from ingestor.pulses.schema import rejection_codes

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH_ROWS = 10_000


def upgrade() -> None:
    op.add_column("rejected_pulse", sa.Column("reason_codes", postgresql.ARRAY(sa.String(32)), nullable=True))
    connection = op.get_bind()
    after_id = 0
    while True:
        rows = connection.execute(
            sa.text("SELECT id, errors FROM rejected_pulse WHERE id > :after ORDER BY id LIMIT :n"),
            {"after": after_id, "n": BATCH_ROWS},
        ).all()
        if not rows:
            break
        connection.execute(
            sa.text("UPDATE rejected_pulse SET reason_codes = :codes WHERE id = :id"),
            [{"id": row.id, "codes": rejection_codes(row.errors)} for row in rows],
        )
        after_id = rows[-1].id
    op.alter_column("rejected_pulse", "reason_codes", nullable=False)
    op.create_index(
        "ix_rejected_pulse_reason_codes", "rejected_pulse", ["reason_codes"], postgresql_using="gin"
    )
    op.create_index("ix_rejected_pulse_received_at_id", "rejected_pulse", ["received_at", "id"])
    op.create_index(
        "ix_rejected_pulse_tenant_received_at_id", "rejected_pulse", ["tenant", "received_at", "id"]
    )
    op.drop_index("ix_rejected_pulse_received_at", table_name="rejected_pulse")


def downgrade() -> None:
    op.create_index("ix_rejected_pulse_received_at", "rejected_pulse", ["received_at"])
    op.drop_index("ix_rejected_pulse_tenant_received_at_id", table_name="rejected_pulse")
    op.drop_index("ix_rejected_pulse_received_at_id", table_name="rejected_pulse")
    op.drop_index("ix_rejected_pulse_reason_codes", table_name="rejected_pulse")
    op.drop_column("rejected_pulse", "reason_codes")
