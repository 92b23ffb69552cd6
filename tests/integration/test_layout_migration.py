"""The migration from the previous Redis layout (v1): what v1 workers left is persisted
exactly once by the next flush, beside the new layout's windows, and pending reads are
refused until it is drained.

v1 keys are written here the way v1's ingest script and flush left them: one hash per
hour `ingestor:window:<h>` named in the set `ingestor:windows`, and snapshots
`ingestor:snapshot:<h>:<β>` named in `ingestor:snapshots` (a flush that died before
its commit, and one that died after it).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text

from ingestor.pulses import keys
from ingestor.pulses.pending import PendingUnavailable, begin_usage_snapshot, read_pending_usage
from tests.support.ledger import Ledger, persisted_sums
from tests.support.windows import countable, pending_flush_keys

pytestmark = pytest.mark.usefixtures("clean_state")

HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)


def v1_count(redis_client, ledger: Ledger, key: str, tenant: str, pulses: int, micro_units: int) -> None:
    """Add to a v1 hash as v1's ingest script did (HINCRBY of n| and a|)."""
    group = keys.group_field(tenant, "vm", "hour")
    redis_client.hincrby(key, b"n|" + group, pulses)
    redis_client.hincrby(key, b"a|" + group, pulses * micro_units)
    for _ in range(pulses):
        ledger.add(
            tenant, "vm", "hour", keys.legacy_window_start_of_key(key), Decimal(micro_units).scaleb(-6)
        )


def test_v1_windows_and_snapshots_are_persisted_once_by_the_new_flush(app, redis_client, database):
    ledger = Ledger()
    persister = app.extensions["pulses"].persister
    hour = keys.hour_of(HOUR)
    # A live v1 window of HOUR, and one of the hour after.
    for h in (hour, hour + 1):
        v1_count(redis_client, ledger, keys.legacy_window_key(h), "acme", 3, 1_500_000)
        redis_client.sadd(keys.LEGACY_PENDING_WINDOWS, keys.legacy_window_key(h))
    # A v1 flush that died after its rename: a snapshot waiting for its commit.
    waiting, _ = keys.legacy_new_snapshot_key(keys.legacy_window_key(hour))
    v1_count(redis_client, ledger, waiting, "globex", 2, 250_000)
    redis_client.sadd(keys.LEGACY_PENDING_SNAPSHOTS, waiting)
    # A v1 flush that died after its commit: its batch id is in flush_batch already.
    committed, committed_id = keys.legacy_new_snapshot_key(keys.legacy_window_key(hour - 1))
    redis_client.hset(committed, mapping={b"n|" + keys.group_field("done", "vm", "hour"): 9})
    redis_client.sadd(keys.LEGACY_PENDING_SNAPSHOTS, committed)
    with database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO flush_batch (id, window_start, group_count, pulse_count) VALUES (:id, :at, 1, 9)"
            ),
            {"id": committed_id, "at": HOUR - timedelta(hours=1)},
        )
    # The new layout's pulses of the same hour, beside them.
    assert app.extensions["pulses"].counter.count([countable("acme", "new-1", HOUR, 4_000_000)]) == 1
    ledger.add("acme", "vm", "hour", HOUR, "4")

    with database.session() as session:
        begin_usage_snapshot(session)
        with pytest.raises(PendingUnavailable, match="draining the previous layout") as refused:
            read_pending_usage(session, redis_client, ["acme"], hour - 2, hour + 2)
    assert refused.value.retry_after_seconds > 0

    report = persister.persist_pending()

    assert report.already_persisted == 1
    assert persisted_sums(database) == ledger.expected()
    assert pending_flush_keys(redis_client) == []
    assert not redis_client.keys(keys.LEGACY_WINDOW_PREFIX + "*")
    assert not redis_client.keys(keys.LEGACY_SNAPSHOT_PREFIX + "*")
    # Drained: pending reads answer again (a new pulse, pending; the rest persisted),
    # and a second flush changes nothing else.
    assert app.extensions["pulses"].counter.count([countable("acme", "new-2", HOUR, 1)]) == 1
    ledger.add("acme", "vm", "hour", HOUR, "0.000001")
    with database.session() as session:
        begin_usage_snapshot(session)
        cells = read_pending_usage(session, redis_client, ["acme"], hour - 2, hour + 2)
    assert [(cell.hour, cell.micro_units, cell.pulse_count) for cell in cells] == [(hour, 1, 1)]
    persister.persist_pending()
    assert persisted_sums(database) == ledger.expected()


def test_a_corrupt_v1_snapshot_is_set_aside_and_the_rest_persists(app, redis_client, database):
    ledger = Ledger()
    corrupt, _ = keys.legacy_new_snapshot_key(keys.legacy_window_key(keys.hour_of(HOUR)))
    redis_client.hset(corrupt, mapping={b"x|" + keys.group_field("t", "s", "u"): 1})
    redis_client.sadd(keys.LEGACY_PENDING_SNAPSHOTS, corrupt)
    window = keys.legacy_window_key(keys.hour_of(HOUR) + 1)
    v1_count(redis_client, ledger, window, "acme", 1, 7)
    redis_client.sadd(keys.LEGACY_PENDING_WINDOWS, window)

    report = app.extensions["pulses"].persister.persist_pending()

    assert report.corrupt_snapshots == [corrupt]
    assert redis_client.smembers(keys.CORRUPT_SNAPSHOTS) == {corrupt.encode()}
    assert persisted_sums(database) == ledger.expected()
    assert redis_client.exists(corrupt)
    assert not redis_client.exists(keys.LEGACY_PENDING_SNAPSHOTS, keys.LEGACY_PENDING_WINDOWS)
