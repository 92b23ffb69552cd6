"""Create pulse_usage, flush_batch and rejected_pulse: hourly sums, flush ids, quarantine.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pulse_usage",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("product_sku", sa.String(128), nullable=False),
        sa.Column("use_unity", sa.String(32), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_amount", sa.Numeric(38, 6), nullable=False),
        sa.Column("pulse_count", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("used_amount >= 0", name="used_amount_not_negative"),
        sa.CheckConstraint("pulse_count > 0", name="pulse_count_positive"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pulse_usage")),
        sa.UniqueConstraint(
            "tenant",
            "product_sku",
            "use_unity",
            "window_start",
            name=op.f("uq_pulse_usage_tenant_product_sku_use_unity_window_start"),
        ),
    )
    op.create_table(
        "flush_batch",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("group_count", sa.Integer(), nullable=False),
        sa.Column("pulse_count", sa.BigInteger(), nullable=False),
        sa.Column("persisted_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flush_batch")),
    )
    op.create_table(
        "rejected_pulse",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("message_id", sa.String(255), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("errors", postgresql.JSONB(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rejected_pulse")),
        sa.UniqueConstraint("message_id", "position", name=op.f("uq_rejected_pulse_message_id_position")),
    )
    op.create_index(op.f("ix_rejected_pulse_received_at"), "rejected_pulse", ["received_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_rejected_pulse_received_at"), table_name="rejected_pulse")
    op.drop_table("rejected_pulse")
    op.drop_table("flush_batch")
    op.drop_table("pulse_usage")
