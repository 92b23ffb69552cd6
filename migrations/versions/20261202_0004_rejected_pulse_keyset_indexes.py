"""Index rejected_pulse for GET /api/v1/rejected-pulses: newest first by (received_at, id), and by tenant.

The keyset walk orders by (received_at DESC, id DESC) and resumes after a cursor's
(received_at, id): one index on both walks it, and replaces the index on received_at
alone (a prefix of it, so replay-rejected's `--since` still uses one). A producer
reads its own tenant's rows: (tenant, received_at, id) serves that filter in order.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_rejected_pulse_received_at_id", "rejected_pulse", ["received_at", "id"])
    op.create_index(
        "ix_rejected_pulse_tenant_received_at_id", "rejected_pulse", ["tenant", "received_at", "id"]
    )
    op.drop_index("ix_rejected_pulse_received_at", table_name="rejected_pulse")


def downgrade() -> None:
    op.create_index("ix_rejected_pulse_received_at", "rejected_pulse", ["received_at"])
    op.drop_index("ix_rejected_pulse_tenant_received_at_id", table_name="rejected_pulse")
    op.drop_index("ix_rejected_pulse_received_at_id", table_name="rejected_pulse")
