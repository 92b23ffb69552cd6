"""The quarantine: invalid pulses kept in PostgreSQL with the reasons they failed."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import insert

from ingestor.database import Database
from ingestor.pulses.models import RejectedPulse
from ingestor.pulses.schema import rejection_codes, rejection_reasons

# A rejected pulse is kept for a human to read, not replayed: past this many
# characters its payload is cut, so a hostile 100 MB string cannot bloat the table.
MAX_PAYLOAD_CHARS = 4096


@dataclass(frozen=True)
class Rejection:
    """One invalid pulse: where it stood in its message, what it was, what is wrong."""

    position: int
    payload: Any
    errors: dict[str, Any]

    @property
    def reasons(self) -> set[tuple[str, str]]:
        """(field, reason code) pairs of its errors, for metrics."""
        return rejection_reasons(self.errors)


def payload_text(payload: Any) -> str:
    """The payload as ASCII JSON text, cut to `MAX_PAYLOAD_CHARS`.

    ASCII escapes make NUL bytes and lone surrogates storable in PostgreSQL text.
    """
    try:
        text = json.dumps(payload, ensure_ascii=True, default=str)
    except (ValueError, RecursionError):
        text = json.dumps(repr(payload)[:MAX_PAYLOAD_CHARS], ensure_ascii=True)
    if len(text) > MAX_PAYLOAD_CHARS:
        text = text[:MAX_PAYLOAD_CHARS] + "...(truncated)"
    return text


def payload_was_cut(text: str) -> bool:
    """Whether `payload_text` cut this stored payload (it is then no longer JSON)."""
    return len(text) > MAX_PAYLOAD_CHARS


def stored_payload(text: str) -> Any | None:
    """The pulse `payload_text` stored, fractional numbers as Decimal; None when it was cut."""
    if payload_was_cut(text):
        return None
    try:
        return json.loads(text, parse_float=Decimal)
    except ValueError:
        return None


def _tenant_of(payload: Any) -> str | None:
    tenant = payload.get("tenant") if isinstance(payload, dict) else None
    if isinstance(tenant, str) and 0 < len(tenant) <= 128 and tenant.isprintable():
        return tenant
    return None


def record_rejections(
    database: Database, *, source: str, message_id: str, rejections: Sequence[Rejection]
) -> list[set[tuple[str, str]]]:
    """Store the rejections of one message, once even if the message is redelivered.

    Returns the (field, reason code) pairs of each rejection, for the caller's metrics.
    """
    return record_rejections_of_messages(database, source=source, messages=[(message_id, rejections)])


def record_rejections_of_messages(
    database: Database, *, source: str, messages: Sequence[tuple[str, Sequence[Rejection]]]
) -> list[set[tuple[str, str]]]:
    """Store the rejections of several messages (id, rejections) in one transaction.

    Idempotent per (message id, position), like `record_rejections`. Returns the
    (field, reason code) pairs of each rejection stored (a redelivered message's
    again, though the table keeps them once): what the caller's metrics count.
    """
    rows = [
        {
            "source": source,
            "message_id": message_id,
            "position": rejection.position,
            "tenant": _tenant_of(rejection.payload),
            "payload": payload_text(rejection.payload),
            "errors": rejection.errors,
            "reason_codes": rejection_codes(rejection.errors),
        }
        for message_id, rejections in messages
        for rejection in rejections
    ]
    if not rows:
        return []
    # Core insert of many rows in one executemany; a row already there (the same
    # message redelivered) is left alone.
    statement = insert(cast(Table, RejectedPulse.__table__)).on_conflict_do_nothing(
        index_elements=["message_id", "position"]
    )
    with database.session() as session, session.begin():
        session.execute(statement, rows)
    return [rejection.reasons for _, rejections in messages for rejection in rejections]
