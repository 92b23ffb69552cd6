"""Ingesting a batch of pulses: validate each, count the valid, quarantine the rest.

This is the logic behind the `ingestor.ingest_pulses` and `ingestor.ingest_pulse`
tasks, as plain functions so tests can call them directly. Every step is idempotent
for a given message id, so a redelivered or retried message changes nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from marshmallow import ValidationError

from ingestor.database import Database
from ingestor.pulses import keys
from ingestor.pulses.aggregation import CountablePulse, PulseCounter
from ingestor.pulses.rejections import Rejection, record_rejections
from ingestor.pulses.schema import PulseSchema, to_micro_units
from ingestor.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestReport:
    """What became of one batch."""

    received: int
    counted: int
    duplicates: int
    rejected: int
    # The (field, reason code) pairs of each rejection stored, for the caller's metrics.
    rejection_reasons: list[set[tuple[str, str]]] = field(default_factory=list, compare=False, repr=False)

    def counts(self) -> dict[str, int]:
        """The four counts, as a task returns them."""
        return {
            "received": self.received,
            "counted": self.counted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
        }


class PulseValidator:
    """Splits a batch into countable pulses and rejections, by the pulse schema."""

    def __init__(self, settings: Settings) -> None:
        self._schema = PulseSchema(
            late_limit=timedelta(seconds=settings.late_limit_seconds),
            future_limit=timedelta(seconds=settings.future_limit_seconds),
        )

    def check(self, pulses: list[Any]) -> tuple[list[tuple[int, dict[str, Any]]], list[Rejection]]:
        """Validate every pulse: the valid ones (with their index) and the rejections."""
        valid: list[tuple[int, dict[str, Any]]] = []
        rejected: list[Rejection] = []
        for index, raw in enumerate(pulses):
            try:
                valid.append((index, self._schema.load_pulse(raw)))
            except ValidationError as exc:
                rejected.append(Rejection(position=index, payload=raw, errors=exc.normalized_messages()))
        return valid, rejected

    def for_enqueue(
        self, pulses: list[Any], received_at: datetime
    ) -> tuple[list[dict[str, Any]], list[Rejection]]:
        """Validate pulses received over HTTP and return the valid ones as wire dicts.

        A pulse without a timestamp is stamped with `received_at`: it entered the
        system then, not whenever a worker gets to it.
        """
        valid, rejected = self.check(pulses)
        wire = [self._schema.dump({"timestamp": received_at, **pulse}) for _, pulse in valid]
        return wire, rejected

    def split(
        self, pulses: list[Any], *, fallback_key: Callable[[int], keys.Position], received_at: datetime
    ) -> tuple[list[CountablePulse], list[Rejection]]:
        """Validate every pulse of a message; nothing in `pulses` can make this raise.

        A pulse with an `id` is deduplicated by (tenant, id) in the id index; one
        without by `fallback_key(index)`, its place in the message as the caller
        identifies it: one bit in the message's ledger, or, alone in its message, a
        record in the id index (about 14 bytes where a ledger key costs about 100).
        """
        valid, rejected = self.check(pulses)
        countable: list[CountablePulse] = []
        alone = len(pulses) == 1
        for index, pulse in valid:
            ledger, place, fingerprint, tenant_and_id = b"", 0, b"", None
            if pulse.get("id") is not None:
                tenant_and_id = (pulse["tenant"], pulse["id"])
                fingerprint = keys.id_fingerprint(*tenant_and_id)
                # Its v1 key made here only where its tag comes from it (a cluster); on one
                # node the counter makes it while the script still reads v1 keys.
                dedupe_key = b"" if keys.one_tag() else keys.dedupe_key_for_id(*tenant_and_id)
            else:
                dedupe_key, scope, place = fallback_key(index)
                # Alone: the ledger is only read (the previous release wrote one).
                ledger = keys.message_ledger_key(keys.tag_of_dedupe_key(dedupe_key), scope)
                if alone:
                    fingerprint = keys.place_fingerprint(scope, place)
            # A pulse without a timestamp happened when it entered the system.
            hour = keys.hour_of(pulse.get("timestamp") or received_at)
            countable.append(
                CountablePulse(
                    dedupe_key=dedupe_key,
                    window_key=keys.window_key(keys.tag_of_dedupe_key(dedupe_key), hour, pulse["tenant"]),
                    group=keys.group_field(pulse["tenant"], pulse["product_sku"], pulse["use_unity"]),
                    micro_units=to_micro_units(pulse["used_amount"]),
                    ledger=ledger,
                    bit=place,
                    fingerprint=fingerprint,
                    tenant_and_id=tenant_and_id,
                )
            )
        return countable, rejected


def ingest_batch(
    pulses: list[Any],
    *,
    message_id: str,
    source: str,
    validator: PulseValidator,
    counter: PulseCounter,
    database: Database,
    received_at: datetime | None = None,
) -> IngestReport:
    """Count the valid pulses of one message in Redis and record the invalid ones.

    Redis first: the valid pulses are counted even while PostgreSQL is down, and the
    retry that follows only has the (idempotent) rejections left to write.
    """
    received_at = received_at or datetime.now(UTC)
    countable, rejected = validator.split(
        pulses, fallback_key=partial(keys.position_in_message, message_id), received_at=received_at
    )
    counted = counter.count(countable) if countable else 0
    reasons = record_rejections(database, source=source, message_id=message_id, rejections=rejected)
    report = IngestReport(
        received=len(pulses),
        counted=counted,
        duplicates=len(countable) - counted,
        rejected=len(rejected),
        rejection_reasons=reasons,
    )
    logger.info(
        "batch ingested: message_id=%s received=%d counted=%d duplicates=%d rejected=%d",
        message_id,
        report.received,
        report.counted,
        report.duplicates,
        report.rejected,
        extra={"message_id": message_id, "source": source, **report.counts()},
    )
    return report
