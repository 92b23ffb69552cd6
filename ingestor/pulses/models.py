"""PostgreSQL tables of the pulses domain: hourly sums, their monthly rollup, flush batches, rejected pulses."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Identity,
    Index,
    Integer,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from ingestor.database import Base

# NUMERIC(38,6): exact to the micro-unit, room for 32 integer digits.
AMOUNT = Numeric(38, 6)


class _UsageSums:
    """The columns hourly rows and their monthly rollup share: a group and its sums."""

    tenant: Mapped[str] = mapped_column(String(128))
    product_sku: Mapped[str] = mapped_column(String(128))
    use_unity: Mapped[str] = mapped_column(String(32))
    used_amount: Mapped[Decimal] = mapped_column(AMOUNT)
    pulse_count: Mapped[int] = mapped_column(BigInteger)


class PulseUsage(_UsageSums, Base):
    """The sum of the pulses of one (tenant, product_sku, use_unity) in one hour."""

    __tablename__ = "pulse_usage"
    __table_args__ = (
        UniqueConstraint("tenant", "product_sku", "use_unity", "window_start"),
        CheckConstraint("used_amount >= 0", name="used_amount_not_negative"),
        CheckConstraint("pulse_count > 0", name="pulse_count_positive"),
        # The API's order, (window_start DESC, id DESC), unfiltered and by tenant.
        Index("ix_pulse_usage_window_start_id", "window_start", "id"),
        # By tenant it also covers the usage sums (GET /api/v1/usage): an index-only scan.
        Index(
            "ix_pulse_usage_tenant_window_start_id_covering",
            "tenant",
            "window_start",
            "id",
            postgresql_include=["product_sku", "use_unity", "used_amount", "pulse_count"],
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class PulseUsageMonthly(_UsageSums, Base):
    """The sum of the hourly rows of one (tenant, product_sku, use_unity) in one UTC month.

    Kept by triggers on pulse_usage in the writer's transaction (migration 0006), never
    written by the application: it always equals pulse_usage grouped by UTC month.
    Its key is its primary key, the one B-tree every trigger's upsert writes; pages are
    half full (fillfactor 50, set by migration 0007: SQLAlchemy declares no table
    storage options) so adding to a row is a HOT update; the platform's month is read
    through a BRIN index on month_start.
    """

    __tablename__ = "pulse_usage_monthly"
    __table_args__ = (
        PrimaryKeyConstraint("tenant", "product_sku", "use_unity", "month_start"),
        Index("ix_pulse_usage_monthly_month_start_brin", "month_start", postgresql_using="brin"),
    )

    # The first instant of a UTC month.
    month_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class FlushBatch(Base):
    """One Redis snapshot persisted: its id makes a re-run of the same flush a no-op."""

    __tablename__ = "flush_batch"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    group_count: Mapped[int] = mapped_column(Integer)
    pulse_count: Mapped[int] = mapped_column(BigInteger)
    persisted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class RejectedPulse(Base):
    """A pulse that failed validation, kept with its reasons instead of being counted."""

    __tablename__ = "rejected_pulse"
    __table_args__ = (
        # A redelivered message carries the same message id: its rejections are kept once.
        UniqueConstraint("message_id", "position"),
        # The API's order, (received_at DESC, id DESC), unfiltered and by tenant.
        Index("ix_rejected_pulse_received_at_id", "received_at", "id"),
        Index("ix_rejected_pulse_tenant_received_at_id", "tenant", "received_at", "id"),
        # The API's reason filter: rows with any of the codes, however rare.
        Index("ix_rejected_pulse_reason_codes", "reason_codes", postgresql_using="gin"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    source: Mapped[str] = mapped_column(String(64))
    message_id: Mapped[str] = mapped_column(String(255))
    position: Mapped[int] = mapped_column(Integer)
    tenant: Mapped[str | None] = mapped_column(String(128))
    # The pulse as JSON text with non-ASCII escaped: PostgreSQL text and jsonb cannot
    # hold the NUL bytes a hostile producer may send. Truncated past a size limit.
    payload: Mapped[str] = mapped_column(Text)
    errors: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # The reason codes of `errors` (schema.rejection_codes), any field, stored so an
    # index finds a rare one.
    reason_codes: Mapped[list[str]] = mapped_column(ARRAY(String(32)))
