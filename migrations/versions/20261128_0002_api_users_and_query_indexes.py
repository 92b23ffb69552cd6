"""Add api_user (hashed passwords) and the indexes behind the API's ordered, keyset queries.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_user",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_user")),
        sa.UniqueConstraint("username", name=op.f("uq_api_user_username")),
    )
    op.create_index("ix_pulse_usage_window_start_id", "pulse_usage", ["window_start", "id"])
    op.create_index("ix_pulse_usage_tenant_window_start_id", "pulse_usage", ["tenant", "window_start", "id"])


def downgrade() -> None:
    op.drop_index("ix_pulse_usage_tenant_window_start_id", table_name="pulse_usage")
    op.drop_index("ix_pulse_usage_window_start_id", table_name="pulse_usage")
    op.drop_table("api_user")
