"""Reading the quarantine: rejected pulses, filtered, newest first, paged by keyset cursor.

The reason filter reads `reason_codes`, stored beside the messages when the row was
written (by `schema.rejection_codes`, the function that gives an item's `reasons`),
through a GIN index: a rare reason is found without walking the whole table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from ingestor.pulses.keyset import Keyset
from ingestor.pulses.models import RejectedPulse
from ingestor.pulses.rejections import payload_was_cut, stored_payload
from ingestor.pulses.schema import reasons_per_field

REJECTED_ORDER = Keyset(RejectedPulse.received_at, RejectedPulse.id)


@dataclass(frozen=True)
class RejectedFilter:
    """Each given filter: any of its values; received_at in the half-open [received_from, received_to)."""

    tenant: tuple[str, ...] = ()
    source: tuple[str, ...] = ()
    reason: tuple[str, ...] = ()  # reason codes, see schema.REASON_CODES
    received_from: datetime | None = None
    received_to: datetime | None = None

    def apply(self, query: Select) -> Select:
        """Add the WHERE clauses of this filter to `query`."""
        if self.tenant:
            query = query.where(RejectedPulse.tenant.in_(self.tenant))
        if self.source:
            query = query.where(RejectedPulse.source.in_(self.source))
        if self.reason:
            query = query.where(RejectedPulse.reason_codes.overlap(list(self.reason)))
        if self.received_from is not None:
            query = query.where(RejectedPulse.received_at >= self.received_from)
        if self.received_to is not None:
            query = query.where(RejectedPulse.received_at < self.received_to)
        return query


def describe(row: RejectedPulse) -> dict[str, Any]:
    """One rejected pulse as the API shows it: the payload parsed back, reasons per field."""
    # A pulse sent as JSON null is stored as "null": not cut, and shown as null.
    truncated = payload_was_cut(row.payload)
    return {
        "id": row.id,
        "received_at": row.received_at,
        "source": row.source,
        "message_id": row.message_id,
        "position": row.position,
        "tenant": row.tenant,
        # Cut when stored (past rejections.MAX_PAYLOAD_CHARS): the stored text as it is.
        "payload": row.payload if truncated else stored_payload(row.payload),
        "payload_truncated": truncated,
        "errors": row.errors,
        "reasons": reasons_per_field(row.errors),
    }


def list_rejected(
    session: Session, rejected_filter: RejectedFilter, limit: int, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of rejected pulses matching `rejected_filter`, newest first, and the next cursor."""
    rows, next_cursor = REJECTED_ORDER.page(
        session, rejected_filter.apply(select(RejectedPulse)), limit, cursor=cursor
    )
    return [describe(row) for row in rows], next_cursor
