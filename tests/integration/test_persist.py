"""The flush against the real Redis and PostgreSQL: guarantees 4 and 5.

Each test interrupts or races the flush at a precise point and checks the sums in
PostgreSQL against a ledger kept by the test.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from redis import Redis
from sqlalchemy import text

from ingestor.database import Database
from ingestor.pulses import keys
from ingestor.pulses.aggregation import PulseCounter
from ingestor.pulses.persistence import Persister
from ingestor.pulses.schema import to_micro_units
from tests.support.ledger import Ledger, persisted_sums
from tests.support.windows import countable, flush_dying_at, pending_flush_keys, pending_snapshot_batches

pytestmark = pytest.mark.usefixtures("clean_state")

HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)


class Producer:
    """Counts pulses straight into Redis and writes them in the ledger."""

    def __init__(self, counter: PulseCounter, ledger: Ledger) -> None:
        self.counter = counter
        self.ledger = ledger
        self.sequence = 0
        self.lock = threading.Lock()

    def count(self, n: int, tenant: str = "acme", amount: str = "0.000123", hour: datetime = HOUR) -> None:
        pulses = []
        with self.lock:
            for _ in range(n):
                self.sequence += 1
                pulses.append(
                    countable(tenant, f"pulse-{self.sequence}", hour, to_micro_units(Decimal(amount)))
                )
                self.ledger.add(tenant, "vm", "hour", hour, amount)
        assert self.counter.count(pulses) == n


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


@pytest.fixture
def persister(app) -> Persister:
    return app.extensions["pulses"].persister


@pytest.fixture
def producer(app, ledger) -> Producer:
    return Producer(app.extensions["pulses"].counter, ledger)


def pending_redis_keys(redis_client) -> list[bytes]:
    """What waits for a flush (committed snapshots, in their grace, do not)."""
    return pending_flush_keys(redis_client)


def test_pulses_arriving_during_a_flush_are_neither_lost_nor_double_counted(
    persister, producer, ledger, database, monkeypatch
):
    producer.count(100)
    persist_batch = persister.persist_batch

    def persist_while_pulses_arrive(*args, **kwargs):
        # After the rename, before the PostgreSQL transaction: fresh live buckets.
        producer.count(50)
        producer.count(5, tenant="newcomer")
        persist_batch(*args, **kwargs)
        # After the commit, before the next run.
        producer.count(25)

    monkeypatch.setattr(persister, "persist_batch", persist_while_pulses_arrive)
    persister.persist_pending()
    assert persisted_sums(database) == {("acme", "vm", "hour", HOUR): (Decimal("0.0123"), 100)}

    monkeypatch.undo()
    persister.persist_pending()
    assert persisted_sums(database) == ledger.expected()
    assert pending_redis_keys(persister._redis) == []


def test_concurrent_pulses_and_repeated_flushes_sum_exactly(persister, producer, ledger, database):
    stop = threading.Event()

    def keep_counting():
        while not stop.is_set():
            producer.count(20)

    threads = [threading.Thread(target=keep_counting) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(15):
            persister.persist_pending()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    persister.persist_pending()

    assert persisted_sums(database) == ledger.expected()
    assert producer.sequence > 100


def test_crash_after_commit_before_done_does_not_double_count(persister, producer, ledger, database):
    producer.count(10)
    flush_dying_at(persister, "after_commit")
    assert len(pending_snapshot_batches(persister._redis)) == 1, "the snapshot outlives the crash"

    producer.count(3)
    report = persister.persist_pending()

    assert report.already_persisted == 1
    assert persisted_sums(database) == ledger.expected()
    assert pending_redis_keys(persister._redis) == []


def test_crash_between_rename_and_commit_persists_the_snapshot_on_the_next_run(
    persister, producer, ledger, database
):
    producer.count(10)
    flush_dying_at(persister, "before_commit")
    assert persisted_sums(database) == {}

    producer.count(4)  # into a new live hash of the same hour
    persister.persist_pending()

    assert persisted_sums(database) == ledger.expected()
    assert pending_redis_keys(persister._redis) == []


def test_postgresql_unreachable_keeps_the_snapshot_for_the_next_run(
    app, persister, producer, ledger, database
):
    producer.count(7)
    unreachable = Persister(
        app.extensions["redis"], Database("postgresql+psycopg2://postgres@127.0.0.1:1/none")
    )
    with pytest.raises(Exception, match=r"(?i)connect"):
        unreachable.persist_pending()
    assert persisted_sums(database) == {}
    assert len(pending_snapshot_batches(persister._redis)) == 1

    persister.persist_pending()

    assert persisted_sums(database) == ledger.expected()


def test_two_runs_persisting_the_same_snapshot_at_once_count_it_once(
    persister, producer, ledger, database, monkeypatch
):
    producer.count(12)
    batch_id = persister.take_snapshot(keys.SHARD_TAGS[0], keys.hour_of(HOUR))
    both_read = threading.Barrier(2)
    write = persister._write

    def write_together(*args, **kwargs):
        both_read.wait(timeout=10)  # both runs have read the snapshot
        return write(*args, **kwargs)

    monkeypatch.setattr(persister, "_write", write_together)
    errors = []

    def run():
        try:
            persister.persist_batch(keys.SHARD_TAGS[0], keys.hour_of(HOUR), batch_id)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert persisted_sums(database) == ledger.expected()
    with database.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM flush_batch")).scalar() == 1


def test_a_held_lock_makes_a_second_run_skip(persister, producer, ledger, database):
    producer.count(5)
    lock = persister._redis.lock(keys.FLUSH_LOCK, timeout=60)
    assert lock.acquire(blocking=False)
    try:
        assert persister.persist_pending().skipped
        assert persisted_sums(database) == {}
    finally:
        lock.release()

    assert not persister.persist_pending().skipped
    assert persisted_sums(database) == ledger.expected()


class _NoLock:
    """A flush lock that never holds anyone back: runs overlap freely."""

    def acquire(self) -> bool:
        return True

    def owned(self) -> bool:
        return True

    def reacquire(self) -> None:
        pass

    def release(self) -> None:
        pass


def test_overlapping_runs_without_the_lock_while_pulses_arrive_count_everything_once(
    app, settings, producer, ledger, database
):
    # Guarantee 5 without its stampede guard: three runs at once, over and over, while
    # two producers keep counting. Runs then meet on the same leftover snapshots (one
    # renamed it, another lists it as a leftover); only the batch id keeps them exact.
    lockless = Redis.from_url(settings.redis_url)
    lockless.lock = lambda *args, **kwargs: _NoLock()  # this client's runs ignore each other
    runs = [Persister(lockless, app.extensions["database"]) for _ in range(3)]
    stop = threading.Event()
    errors: list[Exception] = []

    def keep_counting():
        while not stop.is_set():
            producer.count(10)

    def keep_persisting(persister: Persister):
        for _ in range(40):
            try:
                persister.persist_pending()
            except Exception as exc:  # a run that lost a race may fail; a later run finishes its work
                errors.append(exc)

    producers = [threading.Thread(target=keep_counting) for _ in range(2)]
    flushers = [threading.Thread(target=keep_persisting, args=(run,)) for run in runs]
    for thread in producers + flushers:
        thread.start()
    for thread in flushers:
        thread.join(timeout=120)
    stop.set()
    for thread in producers:
        thread.join(timeout=30)
    runs[0].persist_pending()

    with database.engine.connect() as connection:
        already = connection.execute(text("SELECT count(*) FROM flush_batch")).scalar()
    assert persisted_sums(database) == ledger.expected()
    assert producer.sequence > 100 and already > 10
    assert pending_flush_keys(lockless) == []
    lockless.close()
