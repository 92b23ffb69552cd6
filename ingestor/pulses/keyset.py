"""Newest-first pages over (a timestamp column, id), and the cursors that resume them.

`(moment DESC, id DESC)` is a total order, so pages never skip or repeat a row. A
cursor names the last row of a page; the next page starts strictly after it, which
an index on (moment, id) walks as fast on the millionth row as on the first (OFFSET
has to count its way there). Every list of the API pages this way.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session


class InvalidCursor(ValueError):
    """A cursor that this API did not produce."""


def encode_cursor(moment: datetime, row_id: int) -> str:
    """An opaque cursor naming the row at (`moment`, `row_id`) in the order."""
    raw = json.dumps([moment.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """The (moment, id) a cursor names; InvalidCursor if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        moment, row_id = json.loads(raw)
        position = datetime.fromisoformat(moment), int(row_id)
    except (ValueError, TypeError, UnicodeDecodeError, RecursionError):
        raise InvalidCursor("cursor is not valid: use the next_cursor of a previous response") from None
    if position[0].tzinfo is None or not isinstance(row_id, int):
        raise InvalidCursor("cursor is not valid: use the next_cursor of a previous response")
    return position


@dataclass(frozen=True)
class Keyset:
    """The newest-first order of one table on (`moment`, `id`)."""

    moment: InstrumentedAttribute[datetime]
    id: InstrumentedAttribute[int]

    def page(
        self, session: Session, query: Select, limit: int, *, cursor: str | None = None, offset: int = 0
    ) -> tuple[list[Any], str | None]:
        """`limit` rows of `query` after `cursor` (else after `offset` rows), and the next cursor."""
        if cursor is not None:
            query = query.where(tuple_(self.moment, self.id) < decode_cursor(cursor))
        elif offset:
            query = query.offset(offset)
        # One row more than asked tells whether a next page exists.
        query = query.order_by(self.moment.desc(), self.id.desc()).limit(limit + 1)
        rows = list(session.scalars(query))
        items = rows[:limit]
        if len(rows) <= limit:
            return items, None
        last = items[-1]
        return items, encode_cursor(getattr(last, self.moment.key), getattr(last, self.id.key))
