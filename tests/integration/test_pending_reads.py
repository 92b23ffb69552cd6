"""Pending usage read exactly once at any instant (issue 13): PostgreSQL + Redis.

A read is `begin_usage_snapshot` + `read_pending_usage` + a SQL sum of pulse_usage
under the same snapshot. Whatever the flush does meanwhile (rename, commit, DONE,
expiry, a run killed in between), the sum must hold every pulse counted before the
read began exactly once, and nothing it could not have seen.

The two mechanisms, each shown by a test that fails without it:
- the grace: a flush committing after the PostgreSQL snapshot and finishing before
  the Redis read (`test_a_whole_flush_between_the_snapshot_and_the_redis_read...`)
  counts zero times if DONE deletes the snapshot instead of giving it an expiry;
- the order: a flush between the Redis read and the batch check
  (`test_a_whole_flush_between_the_redis_read_and_the_batch_check...`) counts twice if
  the PostgreSQL snapshot is taken after Redis is read.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import ClassVar

import pytest
from redis import Redis
from sqlalchemy import text

from ingestor.pulses import keys
from ingestor.pulses.pending import (
    FIELD_BUDGET,
    PendingUnavailable,
    begin_usage_snapshot,
    read_pending_usage,
)
from ingestor.pulses.persistence import Persister
from tests.support.pending_chaos import Ingest, Totals, bucket_mates, reads_during_ingest_and_killed_flushes
from tests.support.windows import countable, flush_dying_at

pytestmark = pytest.mark.usefixtures("clean_state")

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
HOURS = [NOW - timedelta(hours=3), NOW - timedelta(hours=2)]
FIRST_HOUR, END_HOUR = keys.hour_of(HOURS[0]) - 1, keys.hour_of(NOW) + 1


def read_usage(database, redis_client, tenants=None, grace_seconds=300) -> Totals:
    """One read as the usage endpoint does it: Redis pending + PostgreSQL, one snapshot."""
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    with database.session() as session:
        begin_usage_snapshot(session)
        cells = read_pending_usage(
            session, redis_client, tenants, FIRST_HOUR, END_HOUR, grace_seconds=grace_seconds
        )
        rows = session.execute(
            text(
                "SELECT tenant, sum(used_amount * 1000000)::bigint, sum(pulse_count) FROM pulse_usage"
                " WHERE tenant = ANY(CAST(:tenants AS text[])) OR :all GROUP BY tenant"
            ),
            {"tenants": list(tenants or []), "all": tenants is None},
        )
        for tenant, micro, count in rows:
            totals[tenant][0] += int(micro)
            totals[tenant][1] += int(count)
        session.rollback()
    for cell in cells:
        totals[cell.tenant][0] += cell.micro_units
        totals[cell.tenant][1] += cell.pulse_count
    return {tenant: (micro, count) for tenant, (micro, count) in totals.items()}


@pytest.fixture
def ingest(app) -> Ingest:
    return Ingest(app.extensions["pulses"].counter, HOURS[0])


@pytest.fixture
def persister(app) -> Persister:
    return app.extensions["pulses"].persister


def test_pending_usage_plus_postgresql_is_exact_at_every_step_of_a_flush(
    app, database, redis_client, ingest, persister
):
    ingest.count("acme", 30)
    ingest.count("globex", 20, hour=HOURS[1])
    expected = ingest.snapshot(ingest.done)
    assert read_usage(database, redis_client) == expected  # all live

    # Renamed, not committed (a run that died before its commit).
    flush_dying_at(persister, "before_commit")
    assert read_usage(database, redis_client) == expected

    # Committed, DONE not run (a run that died after its commit).
    flush_dying_at(persister, "after_commit")
    assert read_usage(database, redis_client) == expected
    assert read_usage(database, redis_client, ["acme"]) == {"acme": expected["acme"]}

    # Everything committed and DONE: the snapshots wait out their grace in Redis.
    persister.persist_pending()
    assert read_usage(database, redis_client) == expected
    registry = keys.parse_registry(
        keys.SHARD_TAGS[0], redis_client.hgetall(keys.registry_key(keys.SHARD_TAGS[0]))
    )
    assert registry.live_hours == () and len(registry.in_state(keys.DONE_STATE)) == 2

    # New pulses meanwhile, for a hour already flushed and a new one.
    ingest.count("acme", 5)
    ingest.count("initech", 4, hour=NOW)
    assert read_usage(database, redis_client) == ingest.snapshot(ingest.done)


def test_committed_snapshots_expire_after_the_grace_and_the_next_flush_forgets_them(
    app, database, redis_client, ingest
):
    persister = Persister(redis_client, database, grace_seconds=1)
    ingest.count("acme", 10)
    persister.persist_pending()
    tag = keys.SHARD_TAGS[0]
    [done] = keys.parse_registry(tag, redis_client.hgetall(keys.registry_key(tag))).in_state(keys.DONE_STATE)
    snapshot = keys.snapshot_bucket_key(tag, done.hour, done.batch_id, keys.bucket_of("acme"))
    assert 0 < redis_client.pttl(snapshot) <= 1000
    assert read_usage(database, redis_client, grace_seconds=1) == ingest.snapshot(ingest.done)

    time.sleep(1.2)
    assert not redis_client.exists(snapshot)
    assert read_usage(database, redis_client, grace_seconds=1) == ingest.snapshot(ingest.done)
    persister.persist_pending()
    assert redis_client.hgetall(keys.registry_key(tag)).keys() == {b"v"}


def test_a_whole_flush_between_the_snapshot_and_the_redis_read_counts_once(
    database, redis_client, ingest, persister
):
    # Case b of the design: renamed, committed and DONE after the PostgreSQL snapshot,
    # before Redis is read. Without the grace (snapshots deleted at DONE) these pulses
    # would be in neither store the read sees.
    ingest.count("acme", 25)
    with database.session() as session:
        begin_usage_snapshot(session)
        persister.persist_pending()
        cells = read_pending_usage(session, redis_client, ["acme"], FIRST_HOUR, END_HOUR, grace_seconds=300)
        persisted = session.execute(text("SELECT count(*) FROM pulse_usage")).scalar_one()
        session.rollback()
    assert persisted == 0, "the snapshot predates the commit"
    assert sum(cell.pulse_count for cell in cells) == 25
    assert sum(cell.micro_units for cell in cells) == ingest.snapshot(ingest.done)["acme"][0]


class FlushAfterRead(Redis):
    """A Redis client that runs a whole flush right after its first script call returns:
    between a pending read's Redis read and its batch check."""

    flush: Persister | None = None

    def evalsha(self, *args, **kwargs):
        reply = super().evalsha(*args, **kwargs)
        flush, FlushAfterRead.flush = FlushAfterRead.flush, None
        if flush is not None:
            flush.persist_pending()
        return reply


def test_a_whole_flush_between_the_redis_read_and_the_batch_check_counts_once(
    settings, database, redis_client, ingest, persister
):
    # Case a: the read finds the pulses live, then they are renamed and committed.
    # The PostgreSQL snapshot, taken before, must not see that commit; taken after
    # Redis (reading Redis first), the pulses would count twice.
    ingest.count("acme", 25)
    reader = FlushAfterRead.from_url(settings.redis_url)
    FlushAfterRead.flush = persister
    try:
        assert read_usage(database, reader, ["acme"]) == ingest.snapshot(ingest.done)
    finally:
        reader.close()
    assert FlushAfterRead.flush is None, "the flush ran"
    with database.engine.connect() as connection:
        assert connection.execute(text("SELECT sum(pulse_count) FROM pulse_usage")).scalar_one() == 25


class RenameAfterRegistryRead(Redis):
    """A Redis client under which a flush renames, or a new hour appears, right after
    each registry read: the read's version fence must see it."""

    changes: ClassVar[list[Callable[[], object]]] = []

    def hgetall(self, name):
        reply = super().hgetall(name)
        if RenameAfterRegistryRead.changes:
            RenameAfterRegistryRead.changes.pop(0)()
        return reply


def test_a_rename_between_the_registry_read_and_the_script_is_read_again(
    settings, database, redis_client, ingest, persister
):
    ingest.count("acme", 10)
    reader = RenameAfterRegistryRead.from_url(settings.redis_url)
    RenameAfterRegistryRead.changes = [
        lambda: persister.take_snapshot(keys.SHARD_TAGS[0], keys.hour_of(HOURS[0])),
        lambda: ingest.count("acme", 3, hour=HOURS[1]),  # a new live hour
    ]
    try:
        assert read_usage(database, reader, ["acme"]) == ingest.snapshot(ingest.done)
    finally:
        reader.close()
    assert RenameAfterRegistryRead.changes == []


def test_a_layout_changing_under_every_read_is_a_clear_refusal(settings, database, ingest):
    ingest.count("acme", 1)  # something to read (a registry with nothing in range is an answer)
    reader = RenameAfterRegistryRead.from_url(settings.redis_url)
    RenameAfterRegistryRead.changes = [
        (lambda h=h: ingest.count("acme", 1, hour=NOW - timedelta(hours=10 + h))) for h in range(5)
    ]
    try:
        with database.session() as session:
            begin_usage_snapshot(session)
            with pytest.raises(PendingUnavailable, match="changed under 5 reads") as refused:
                read_pending_usage(session, reader, ["acme"], 0, END_HOUR, grace_seconds=300)
    finally:
        reader.close()
    assert refused.value.retry_after_seconds >= 1


def test_a_read_slower_than_half_the_grace_is_refused(database, redis_client, ingest):
    ingest.count("acme", 1)
    with database.session() as session:
        begin_usage_snapshot(session)
        time.sleep(0.01)
        with pytest.raises(PendingUnavailable, match="half the grace"):
            read_pending_usage(session, redis_client, None, FIRST_HOUR, END_HOUR, grace_seconds=0)


def test_a_read_without_begin_usage_snapshot_is_a_programming_error(database, redis_client):
    with database.session() as session, pytest.raises(RuntimeError, match="begin_usage_snapshot"):
        read_pending_usage(session, redis_client, None, FIRST_HOUR, END_HOUR)


def test_while_the_previous_layout_is_drained_pending_reads_are_refused(database, redis_client):
    redis_client.sadd(keys.LEGACY_PENDING_WINDOWS, keys.legacy_window_key(keys.hour_of(HOURS[0])))
    with database.session() as session:
        begin_usage_snapshot(session)
        with pytest.raises(PendingUnavailable, match="draining the previous layout"):
            read_pending_usage(session, redis_client, None, FIRST_HOUR, END_HOUR)


def test_a_tenant_s_read_holds_its_own_groups_only_whatever_shares_its_bucket(database, redis_client, ingest):
    look_alikes = ["acme", "acme2", 'acme"', "acme\\", "acm"]
    for tenant in [*look_alikes, *bucket_mates("acme", 3)]:
        ingest.count(tenant, 3)
    ingest.count("acme", 2, hour=NOW - timedelta(hours=30))  # before the range read

    everything = read_usage(database, redis_client)
    for tenant in look_alikes:
        assert read_usage(database, redis_client, [tenant]) == {tenant: everything[tenant]}
    assert everything["acme"][1] == 3
    assert read_usage(database, redis_client, ["acme", "acme2"]) == {
        "acme": everything["acme"],
        "acme2": everything["acme2"],
    }
    assert read_usage(database, redis_client, ["nobody"]) == {}


def test_cells_are_per_hour_and_group_with_exact_sums_past_64_bits(database, redis_client, app):
    huge = 2**63 - 1
    pulses = [countable("acme", f"big{i}", HOURS[0], huge, "vm", "h") for i in range(3)]
    pulses += [countable("acme", "small", HOURS[1], 7, "disk", "GB")]
    assert app.extensions["pulses"].counter.count(pulses) == 4
    with database.session() as session:
        begin_usage_snapshot(session)
        cells = read_pending_usage(session, redis_client, ["acme"], FIRST_HOUR, END_HOUR)
    assert sorted((c.hour, c.product_sku, c.use_unity, c.micro_units, c.pulse_count) for c in cells) == [
        (keys.hour_of(HOURS[0]), "vm", "h", 3 * huge, 3),
        (keys.hour_of(HOURS[1]), "disk", "GB", 7, 1),
    ]
    with database.session() as session:
        begin_usage_snapshot(session)
        only_first = read_pending_usage(
            session, redis_client, ["acme"], keys.hour_of(HOURS[0]), keys.hour_of(HOURS[1])
        )
    assert [(c.product_sku, c.pulse_count) for c in only_first] == [("vm", 3)]


def test_a_bucket_bigger_than_the_field_budget_is_read_whole_in_several_calls(
    database, redis_client, persister, app
):
    groups = FIELD_BUDGET  # 2 fields each: twice the budget of one call
    pulses = [countable("acme", f"g{i}", HOURS[0], i, f"sku-{i}", "h") for i in range(groups)]
    counter = app.extensions["pulses"].counter
    for start in range(0, groups, 5000):
        counter.count(pulses[start : start + 5000])
    expected = {"acme": (sum(range(groups)), groups)}
    assert read_usage(database, redis_client, ["acme"]) == expected
    persister.take_snapshot(keys.SHARD_TAGS[0], keys.hour_of(HOURS[0]))  # the same, as a pending batch
    assert read_usage(database, redis_client, ["acme"]) == expected
    assert read_usage(database, redis_client) == expected


def test_reads_during_ingest_and_flushes_killed_mid_way_count_every_pulse_once(
    app, database, redis_client, ingest, tmp_path
):
    """The exactly-once proof (tests/support/pending_chaos.py): pulses counted and
    flushed (in process, and in processes killed after their rename or their commit)
    while a reader reads in a loop."""
    read = partial(read_usage, database, redis_client)
    reads_during_ingest_and_killed_flushes(read, app, ingest, HOURS, tmp_path)
