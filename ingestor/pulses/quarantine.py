"""Reading the quarantine: rejected pulses, filtered, newest first, paged by keyset cursor.

The reason filter is evaluated in PostgreSQL from the stored messages (`errors`
JSONB), with the same message prefixes `schema.reason_code` reads, so the codes an
item shows and the codes it is found by cannot disagree (no second copy of them is
stored that could drift from the messages).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ARRAY, Select, Text, bindparam, select, text
from sqlalchemy.orm import Session

from ingestor.pulses.keyset import Keyset
from ingestor.pulses.models import RejectedPulse
from ingestor.pulses.rejections import stored_payload
from ingestor.pulses.schema import REASON_CODES, reason_prefixes, reasons_per_field

REJECTED_ORDER = Keyset(RejectedPulse.received_at, RejectedPulse.id)

# Every message of every field of the row, as text (a field's value that is not a list
# is one message, as in `schema.reasons_per_field`); non-strings are NULL.
_MESSAGES = """
SELECT CASE jsonb_typeof(message) WHEN 'string' THEN message #>> '{}' END AS message_text
FROM jsonb_each(rejected_pulse.errors) AS field(name, messages),
     jsonb_array_elements(CASE jsonb_typeof(field.messages) WHEN 'array' THEN field.messages
                          ELSE jsonb_build_array(field.messages) END) AS message
"""
_ALL_PREFIXES = [prefix for code in REASON_CODES for prefix in reason_prefixes(code)]


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
            query = query.where(_has_reason(self.reason))
        if self.received_from is not None:
            query = query.where(RejectedPulse.received_at >= self.received_from)
        if self.received_to is not None:
            query = query.where(RejectedPulse.received_at < self.received_to)
        return query


def _has_reason(codes: tuple[str, ...]) -> Any:
    """True for a row with a message of any of `codes` (`invalid`: a message no prefix reads)."""
    matches, params = [], []
    prefixes = [prefix for code in codes for prefix in reason_prefixes(code)]
    if prefixes:
        matches.append("message_text ^@ ANY(:reason_prefixes)")
        params.append(bindparam("reason_prefixes", prefixes, type_=ARRAY(Text)))
    if "invalid" in codes:
        matches.append("(message_text IS NULL OR NOT message_text ^@ ANY(:all_reason_prefixes))")
        params.append(bindparam("all_reason_prefixes", _ALL_PREFIXES, type_=ARRAY(Text)))
    where = " OR ".join(matches)
    return text(f"EXISTS (SELECT 1 FROM ({_MESSAGES}) AS messages WHERE {where})").bindparams(*params)


def describe(row: RejectedPulse) -> dict[str, Any]:
    """One rejected pulse as the API shows it: the payload parsed back, reasons per field."""
    payload = stored_payload(row.payload)
    truncated = payload is None
    return {
        "id": row.id,
        "received_at": row.received_at,
        "source": row.source,
        "message_id": row.message_id,
        "position": row.position,
        "tenant": row.tenant,
        # Cut when stored (past rejections.MAX_PAYLOAD_CHARS): the stored text as it is.
        "payload": row.payload if truncated else payload,
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
