"""The flush's two snapshot readers and the ways its rows reach PostgreSQL.

The server-side reader (a Lua script building the CSV in Redis) must give exactly the
careful reader's rows, or refuse; the writer must refuse a group sent twice in every
mode, and flushes of one window must take turns. All against the real Redis and
PostgreSQL.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg2.errors
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from ingestor.outages import TRANSIENT_ERRORS
from ingestor.pulses import keys
from ingestor.pulses.persistence import Persister
from ingestor.pulses.snapshot_rows import (
    SERVER_SIDE_ROWS_SCRIPT,
    SnapshotChunk,
    UnusualSnapshot,
    server_side_chunks,
    snapshot_chunks,
)
from tests.support.ledger import persisted_sums
from tests.support.windows import leave_pending_batch

pytestmark = pytest.mark.usefixtures("clean_state")

HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=4)
WINDOW = HOUR.isoformat().encode()
SNAPSHOT = keys.window_bucket_key(keys.SHARD_TAGS[0], keys.hour_of(HOUR), 0) + ":snapshot:test"

# Values as the ingest path accepts them (printable), quotes, commas and backslashes
# included: those take the reader's slow, decoding path.
values = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=12)
groups = st.dictionaries(
    st.tuples(values, values, values),
    st.tuples(st.integers(1, 10**6), st.none() | st.integers(0, 2**63 - 1)),
    min_size=1,
    max_size=40,
)


def write_snapshot(redis_client, contents: dict) -> None:
    """A snapshot as the ingest script leaves it: a count per group, an amount unless zero."""
    redis_client.delete(SNAPSHOT)
    fields = {}
    for group, (count, micro_units) in contents.items():
        fields[keys.COUNT_FIELD_PREFIX + keys.group_field(*group)] = count
        if micro_units is not None:
            fields[keys.AMOUNT_FIELD_PREFIX + keys.group_field(*group)] = micro_units
    redis_client.hset(SNAPSHOT, mapping=fields)


def server_side_rows(redis_client, chunk_groups: int = 10_000) -> list[bytes]:
    script = redis_client.register_script(SERVER_SIDE_ROWS_SCRIPT)
    chunks = server_side_chunks(script, [SNAPSHOT], WINDOW, chunk_groups)
    return sorted(row for chunk in chunks for row in chunk.csv.splitlines(keepends=True))


def careful_rows(redis_client) -> list[bytes]:
    chunks = snapshot_chunks(redis_client.hscan_iter(SNAPSHOT), WINDOW)
    return sorted(row for chunk in chunks for row in chunk.csv.splitlines(keepends=True))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(contents=groups)
def test_the_server_side_reader_gives_the_careful_readers_rows(redis_client, contents):
    write_snapshot(redis_client, contents)

    assert server_side_rows(redis_client) == careful_rows(redis_client)


def test_the_server_side_reader_reads_a_big_snapshot_in_chunks(redis_client):
    contents = {(f"tenant-{n}", "vm", "h"): (n % 7 + 1, n * 1_000_003) for n in range(25_000)}
    write_snapshot(redis_client, contents)
    script = redis_client.register_script(SERVER_SIDE_ROWS_SCRIPT)

    chunks = list(server_side_chunks(script, [SNAPSHOT], WINDOW, chunk_groups=10_000))

    assert len(chunks) >= 3  # many HSCAN calls, cut into chunks of about 10,000 groups
    assert sum(c.groups for c in chunks) == 25_000
    assert sum(c.pulses for c in chunks) == sum(count for count, _ in contents.values())
    assert server_side_rows(redis_client) == careful_rows(redis_client)


def test_the_server_side_reader_reads_a_batch_of_bucket_keys_within_its_budget(redis_client):
    # 3000 groups over the 1024 buckets of a batch, half of them empty, one big bucket:
    # calls stop at the field budget, between keys or inside the big one.
    hour, batch_id = keys.hour_of(HOUR), uuid.uuid4()
    bucket_keys = keys.snapshot_bucket_keys(keys.SHARD_TAGS[0], hour, batch_id)
    contents = {(f"tenant-{n}", "vm", "h"): (n % 5 + 1, n * 7) for n in range(3000)}
    for (tenant, sku, unit), (count, micro) in contents.items():
        key = bucket_keys[keys.bucket_of(tenant) % 512]
        redis_client.hset(key, mapping={b"n|" + keys.group_field(tenant, sku, unit): count})
        redis_client.hset(key, mapping={b"a|" + keys.group_field(tenant, sku, unit): micro})
    big = {b"n|" + keys.group_field(f"big-{n}", "vm", "h"): 1 for n in range(5000)}
    redis_client.hset(bucket_keys[700], mapping=big)
    script = redis_client.register_script(SERVER_SIDE_ROWS_SCRIPT)

    chunks = list(server_side_chunks(script, bucket_keys, WINDOW, chunk_groups=1000))

    assert sum(c.groups for c in chunks) == 8000
    assert sum(c.pulses for c in chunks) == sum(count for count, _ in contents.values()) + 5000
    rows = sorted(row for chunk in chunks for row in chunk.csv.splitlines(keepends=True))
    assert len(set(rows)) == 8000
    assert b'"tenant-7","vm","h",' + WINDOW + b",0.000049,3\n" in rows


@pytest.mark.parametrize(
    "extra",
    [
        {b"a1|" + keys.group_field("t", "s", "u"): 5},  # a spill past 64 bits
        {b"x|" + keys.group_field("t", "s", "u"): 5},  # a field the script never writes
        {keys.AMOUNT_FIELD_PREFIX + keys.group_field("orphan", "s", "u"): 5},
    ],  # an amount without a count
)
def test_the_server_side_reader_refuses_what_it_cannot_vouch_for(redis_client, extra):
    write_snapshot(redis_client, {("t", "s", "u"): (1, 7)})
    redis_client.hset(SNAPSHOT, mapping=extra)

    with pytest.raises(UnusualSnapshot):
        server_side_rows(redis_client)


@pytest.mark.parametrize("rows_exist", [False, True], ids=["first flush: COPY", "rows exist: upsert"])
def test_a_group_sent_twice_is_refused_never_added_twice(app, database, rows_exist):
    persister = app.extensions["pulses"].persister
    row = b'"t","s","u",%s,1.000000,1\n' % WINDOW
    if rows_exist:
        assert persister._write_chunks(uuid.uuid4(), HOUR, [SnapshotChunk(row, 1, 1)]) == (1, 1)
    before = persisted_sums(database)

    # In two chunks, as HSCAN returning a field twice would send it.
    twice = [SnapshotChunk(row, 1, 1), SnapshotChunk(row, 1, 1)]
    with pytest.raises((psycopg2.errors.UniqueViolation, psycopg2.errors.CardinalityViolation)):
        persister._write_chunks(uuid.uuid4(), HOUR, twice)

    assert persisted_sums(database) == before


def test_flushes_of_one_window_take_turns(app, database):
    """A second flush waits for the first to commit, then adds to its rows."""
    persister = app.extensions["pulses"].persister
    row = b'"t","s","u",%s,2.500000,3\n' % WINDOW
    first_copying, release_first = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def slow_chunks():
        first_copying.set()  # the first flush has found the window empty
        release_first.wait(10)
        yield SnapshotChunk(row, 1, 3)

    def run(chunks) -> None:
        try:
            persister._write_chunks(uuid.uuid4(), HOUR, chunks)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    first = threading.Thread(target=run, args=(slow_chunks(),))
    first.start()
    assert first_copying.wait(10)
    second = threading.Thread(target=run, args=([SnapshotChunk(row, 1, 3)],))
    second.start()
    second.join(1)
    assert second.is_alive(), "the second flush did not wait for the first"
    release_first.set()
    first.join(10)
    second.join(10)

    assert errors == []
    assert persisted_sums(database) == {("t", "s", "u", HOUR): (Decimal("5.000000"), 6)}


FLUSH_BACKEND = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
    " AND pid <> pg_backend_pid() AND state = 'idle in transaction'"
)


@pytest.mark.parametrize("fault", ["connection cut", "statement canceled"])
def test_postgresql_failing_in_the_middle_of_a_copy_is_a_transient_error(app, database, fault):
    """The persist task retries TRANSIENT_ERRORS; a COPY cut off or canceled must be one."""
    persister = app.extensions["pulses"].persister
    row = b'"t","s","u",%s,1.000000,1\n' % WINDOW
    blocker = database.engine.connect()

    def chunks_then_fault():
        # The flush's connection now sits idle in its transaction, before its COPY.
        with database.engine.connect() as other:
            (pid,) = other.execute(text(FLUSH_BACKEND)).one()
            if fault == "connection cut":
                other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            else:
                # SHARE: the flush already reads the table, but its COPY will wait
                # for this lock until it is canceled, as an
                # operator's pg_cancel_backend or a statement_timeout would.
                blocker.execute(text("LOCK TABLE pulse_usage IN SHARE MODE"))
                cancel = "SELECT pg_sleep(0.3), pg_cancel_backend(:pid)"
                threading.Thread(target=lambda: _run(database, cancel, pid)).start()
        yield SnapshotChunk(row, 1, 1)

    try:
        with pytest.raises(TRANSIENT_ERRORS):
            persister._write_chunks(uuid.uuid4(), HOUR, chunks_then_fault())
    finally:
        blocker.rollback()
        blocker.close()

    assert persisted_sums(database) == {}
    # The pool hands out a live connection again: the next flush works.
    assert persister._write_chunks(uuid.uuid4(), HOUR, [SnapshotChunk(row, 1, 1)]) == (1, 1)


def _run(database, sql: str, pid: int) -> None:
    with database.engine.connect() as connection:
        connection.execute(text(sql), {"pid": pid})


def test_redis_refusing_the_script_falls_back_to_the_careful_reader(app, redis_client, database):
    """An ACL without EVALSHA, or a script error: the snapshot is still persisted, exactly."""
    persister = app.extensions["pulses"].persister
    persister._read_rows = redis_client.register_script(
        "return redis.error_reply('NOPERM this user has no permissions to run the script')"
    )
    leave_pending_batch(
        redis_client,
        HOUR,
        {
            keys.COUNT_FIELD_PREFIX + keys.group_field("acme", "vm", "h"): 3,
            keys.AMOUNT_FIELD_PREFIX + keys.group_field("acme", "vm", "h"): 4_500_000,
        },
    )

    report = persister.persist_pending()

    assert (report.groups, report.pulses, report.corrupt_snapshots) == (1, 3, [])
    assert persisted_sums(database) == {("acme", "vm", "h", HOUR): (Decimal("4.500000"), 3)}


def test_a_flush_whose_client_froze_is_ended_by_the_server_and_the_next_one_proceeds(
    app, redis_client, database
):
    """A worker frozen mid-flush (or a network path dropped without a reset) must not
    hold the window's lock and batch for hours: the server ends the idle transaction."""
    persister = Persister(redis_client, database, transaction_timeout_ms=1000)
    row = b'"t","s","u",%s,2.000000,4\n' % WINDOW
    frozen, thaw = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def frozen_chunks():
        frozen.set()  # claimed the batch, holds the window's lock, says nothing more
        thaw.wait(30)
        yield SnapshotChunk(row, 1, 4)

    def first() -> None:
        try:
            persister._write_chunks(uuid.uuid4(), HOUR, frozen_chunks())
        except BaseException as exc:  # checked below
            outcome["first"] = exc

    def second() -> None:
        # As the persist task would: a transient error is retried.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                outcome["second"] = persister._write_chunks(uuid.uuid4(), HOUR, [SnapshotChunk(row, 1, 4)])
                return
            except TRANSIENT_ERRORS:
                time.sleep(0.2)

    first_thread = threading.Thread(target=first)
    first_thread.start()
    assert frozen.wait(10)
    second_thread = threading.Thread(target=second)
    second_thread.start()
    second_thread.join(15)
    thaw.set()
    first_thread.join(10)

    assert outcome.get("second") == (1, 4), "the second flush never got past the frozen one"
    assert isinstance(outcome.get("first"), TRANSIENT_ERRORS)  # its session was ended
    assert persisted_sums(database) == {("t", "s", "u", HOUR): (Decimal("2.000000"), 4)}
