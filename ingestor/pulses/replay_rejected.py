"""Replaying quarantined pulses: `rejected_pulse` rows counted after all, each at most once.

A pulse is rejected rather than guessed at; some rejections are usage an operator
decides to bill anyway once the cause is known: a float producer's `0.30000000000000004`
(more than 6 fractional digits, rounded half-even to 6 only when asked), or a
producer's bug fixed on this side. Each selected row's payload goes through the
schema again (its `timestamp`, or else the time the row was received, so it counts
in the hour it entered the system and the late limit still applies):

- valid: counted into Redis, then its row deleted, in one PostgreSQL transaction
  that holds the rows locked (`FOR UPDATE SKIP LOCKED`: two replays never take the
  same row). Its dedupe key is the producer's (tenant, id) when it has one, else one
  derived from the row (its message id and position): a row replayed again, after
  a crash between the Redis write and the commit, counts 0 times;
- still invalid, or a payload cut when it was stored: the row is left as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from functools import partial
from typing import Any

from sqlalchemy import delete, select

from ingestor.database import Database
from ingestor.pulses import keys
from ingestor.pulses.aggregation import CountablePulse, PulseCounter
from ingestor.pulses.ingest import PulseValidator
from ingestor.pulses.models import RejectedPulse
from ingestor.pulses.rejections import stored_payload
from ingestor.pulses.schema import DECIMAL_STRING, MAX_AMOUNT, MAX_FRACTION_DIGITS, rejection_reasons

logger = logging.getLogger(__name__)


def _same_key(key: keys.Position, _index: int) -> keys.Position:
    # The fallback key of a replayed row: its own, whatever its index in the call.
    return key


# Rows locked, counted and deleted per transaction.
CHUNK_ROWS = 1000
_MICRO_UNIT = Decimal(1).scaleb(-MAX_FRACTION_DIGITS)


@dataclass(frozen=True)
class ReplayFilter:
    """Which rows to replay: every given condition must hold."""

    reason: str | None = None  # a field (`used_amount`) or a reason code (`fraction_digits`)
    tenant: str | None = None
    since: datetime | None = None  # received at or after
    limit: int | None = None


@dataclass
class ReplayReport:
    """What a replay did with the rows it selected."""

    counted: int = 0
    duplicates: int = 0  # valid, but their dedupe key was already counted
    rounded: int = 0
    still_invalid: int = 0
    unreadable: int = 0


def round_half_even(pulse: Any) -> bool:
    """Round a too-precise `used_amount` of `pulse` to 6 fractional digits; True if it did.

    Only an amount that is otherwise valid (finite, not negative, within the maximum)
    is touched: anything else stays for the schema to reject.
    """
    value = pulse.get("used_amount") if isinstance(pulse, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, str, Decimal)):
        return False
    if isinstance(value, str) and not DECIMAL_STRING.match(value):
        return False  # a string the schema refuses stays refused ("1_000", " 1")
    try:
        amount = Decimal(value)
    except InvalidOperation:
        return False
    exponent = amount.as_tuple().exponent
    if not amount.is_finite() or amount < 0 or amount > MAX_AMOUNT or not isinstance(exponent, int):
        return False
    if exponent >= -MAX_FRACTION_DIGITS:
        return False
    pulse["used_amount"] = format(amount.quantize(_MICRO_UNIT, rounding=ROUND_HALF_EVEN), "f")
    return True


def _matches(row: RejectedPulse, reason: str | None) -> bool:
    if reason is None:
        return True
    return any(reason in pair for pair in rejection_reasons(row.errors))


def replay_rejected(
    database: Database,
    validator: PulseValidator,
    counter: PulseCounter,
    selection: ReplayFilter,
    *,
    round_amounts: bool = False,
    dry_run: bool = False,
) -> ReplayReport:
    """Count the selected rejected pulses that are valid now, and delete their rows."""
    report = ReplayReport()
    budget = selection.limit
    after_id = 0
    while budget is None or budget > 0:
        with database.session() as session, session.begin():
            statement = select(RejectedPulse).where(RejectedPulse.id > after_id)
            if selection.tenant is not None:
                statement = statement.where(RejectedPulse.tenant == selection.tenant)
            if selection.since is not None:
                statement = statement.where(RejectedPulse.received_at >= selection.since)
            statement = (
                statement.order_by(RejectedPulse.id).limit(CHUNK_ROWS).with_for_update(skip_locked=True)
            )
            rows = list(session.scalars(statement))
            if not rows:
                break
            after_id = rows[-1].id
            rows = [row for row in rows if _matches(row, selection.reason)]
            if budget is not None:
                rows, budget = rows[:budget], budget - min(len(rows), budget)
            countable, replayed_ids = [], []
            for row, pulse in _valid_pulses(rows, validator, round_amounts, report):
                countable.append(pulse)
                replayed_ids.append(row.id)
            if dry_run:  # the transaction ends having changed nothing
                report.counted += len(countable)
                continue
            counted = counter.count(countable) if countable else 0
            if replayed_ids:
                session.execute(delete(RejectedPulse).where(RejectedPulse.id.in_(replayed_ids)))
            report.counted += counted
            report.duplicates += len(countable) - counted
    logger.info(
        "rejected pulses replayed: counted=%d duplicates=%d rounded=%d still_invalid=%d unreadable=%d%s",
        report.counted,
        report.duplicates,
        report.rounded,
        report.still_invalid,
        report.unreadable,
        " (dry run)" if dry_run else "",
        extra={**report.__dict__, "dry_run": dry_run},
    )
    return report


def _valid_pulses(
    rows: list[RejectedPulse], validator: PulseValidator, round_amounts: bool, report: ReplayReport
) -> Iterator[tuple[RejectedPulse, CountablePulse]]:
    for row in rows:
        pulse = stored_payload(row.payload)
        if pulse is None:
            report.unreadable += 1
            continue
        rounded = round_amounts and round_half_even(pulse)
        if isinstance(pulse, dict) and pulse.get("timestamp") is None:
            # It entered the system then: that hour, and the late limit applies to it.
            pulse["timestamp"] = row.received_at.isoformat()
        # Without an id, a place of the row's own: unique per row, the same every replay
        # (its bit in the ledger of its message's rejected rows).
        row_key = keys.position_in_message(f"rejected:{row.message_id}", row.position)
        countable, rejections = validator.split(
            [pulse], fallback_key=partial(_same_key, row_key), received_at=row.received_at
        )
        if rejections:
            report.still_invalid += 1
            continue
        report.rounded += rounded
        yield row, countable[0]
