"""Guarantee 4 with real worker processes: a flush cut off PostgreSQL, or killed at its
two dangerous points, neither loses nor double counts.

- PostgreSQL unreachable (through a proxy the test cuts) from the start of a persist
  run, and cut in the middle of one: the task fails on the transient error and
  retries with backoff, the snapshot waits in Redis, the run after the outage
  persists it once.
- The worker killed with SIGKILL between the rename and the commit, and between the
  commit and DONE (`tests/support/crash_worker.py`): RabbitMQ
  redelivers the persist task, whose next run finishes the leftover snapshot first,
  once (the flush_batch row is what stops the second case from counting twice).

(`test_persist.py` has the same points in-process, with precise interleavings.)
"""

from __future__ import annotations

import pytest
from sqlalchemy import text

from ingestor.messaging.topology import PERSIST
from ingestor.pulses import keys
from ingestor.pulses.task_names import PERSIST_PULSES
from tests.support.faults import TASK_QUEUES, proxied, retries_logged, wait_for
from tests.support.ledger import Ledger, hour_ago, make_pulses, persisted_sums
from tests.support.windows import pending_flush_keys, pending_snapshot_batches
from tests.support.worker import WorkerProcess, wait_until_idle

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("clean_state")]


def count_in_redis(app, pulses: list[dict]) -> None:
    """Count `pulses` straight into Redis, as a worker's ingest task would."""
    services = app.extensions["pulses"]
    countable, rejected = services.validator.split(
        pulses, fallback_key=lambda index: pytest.fail("pulses here carry ids"), received_at=hour_ago(0)
    )
    assert not rejected
    assert services.counter.count(countable) == len(pulses)


def flush_batches(database) -> int:
    with database.engine.connect() as connection:
        return connection.execute(text("SELECT count(*) FROM flush_batch")).scalar_one()


def send_persist(producer) -> None:
    producer.send_task(PERSIST_PULSES, exchange=PERSIST, routing_key=PERSIST)


def test_postgresql_unreachable_during_a_persist_run_persists_everything_once(
    producer, app, settings, database, redis_client
):
    ledger = Ledger()
    hours = 30
    for h in range(hours):
        count_in_redis(app, make_pulses(ledger, 3, prefix=f"h{h}", hour=hour_ago(2 + h)))

    with proxied(settings, task_retry_backoff_max_seconds=2) as proxies:
        worker = WorkerProcess(proxies.settings, "pg-cut", concurrency=1)
        worker.start(producer)
        try:
            # PostgreSQL unreachable: the run renames one window, fails, retries.
            with proxies.database.outage():
                send_persist(producer)
                wait_for(lambda: retries_logged(worker) >= 2, what="two retries of the persist task")
                assert persisted_sums(database) == {}
                assert len(pending_snapshot_batches(redis_client)) == 1, "the snapshot waits"
            # Back: a retry persists the waiting snapshot once, then every other window.
            wait_until_idle(producer, worker, TASK_QUEUES)
        finally:
            worker.stop()

    assert persisted_sums(database) == ledger.expected()
    assert flush_batches(database) == hours
    assert pending_flush_keys(redis_client) == []


def test_postgresql_cut_in_the_middle_of_a_persist_run_persists_everything_once(
    producer, app, settings, database, redis_client
):
    """The cut lands between windows or inside one's COPY: committed windows stay, the
    rest waits; the retried task finishes the run, each window once."""
    ledger = Ledger()
    hours = 150
    for h in range(hours):
        count_in_redis(app, make_pulses(ledger, 200, prefix=f"h{h}", hour=hour_ago(2 + h), tenants=200))

    with proxied(settings, task_retry_backoff_max_seconds=2) as proxies:
        worker = WorkerProcess(proxies.settings, "pg-cut-mid-run", concurrency=1)
        worker.start(producer)
        try:
            send_persist(producer)
            wait_for(lambda: flush_batches(database) >= 5, what="the run's first windows committed")
            with proxies.database.outage():
                persisted_at_cut = flush_batches(database)
                wait_for(lambda: retries_logged(worker) >= 1, what="a retry of the persist task")
            assert persisted_at_cut < hours, "the run ended before the cut: make the windows bigger"
            wait_until_idle(producer, worker, TASK_QUEUES, timeout=120)
        finally:
            worker.stop()

    assert persisted_sums(database) == ledger.expected()
    assert flush_batches(database) == hours
    assert pending_flush_keys(redis_client) == []


@pytest.mark.parametrize("crash_point", ["before_commit", "after_commit"])
def test_worker_killed_mid_flush_leaves_nothing_lost_or_counted_twice(
    producer, app, settings, database, redis_client, crash_point, tmp_path
):
    ledger = Ledger()
    for h in range(3):
        count_in_redis(app, make_pulses(ledger, 40, prefix=f"h{h}", hour=hour_ago(2 + h)))
    marker = tmp_path / "crashed"
    doomed = WorkerProcess(
        settings,
        f"crash-{crash_point}",
        concurrency=1,
        app="tests.support.crash_worker",
        extra_env={"CRASH_POINT": crash_point, "CRASH_MARKER": str(marker)},
    )
    doomed.start(producer)
    try:
        send_persist(producer)
        wait_for(lambda: doomed.process.poll() is not None, what="the worker's death at " + crash_point)
    finally:
        doomed.stop()
    assert marker.exists()
    [snapshot] = pending_snapshot_batches(redis_client)  # it outlives the crash
    assert flush_batches(database) == (1 if crash_point == "after_commit" else 0)

    # Late pulses for the hour of the snapshot arrive meanwhile, into a fresh live hash.
    late_hour = keys.hour_start(snapshot.hour)
    count_in_redis(app, make_pulses(ledger, 7, prefix="late", hour=late_hour))

    # The persist message was never acked: RabbitMQ redelivers it to the next worker,
    # whose run must finish the dead run's snapshot first, and everything else.
    survivor = WorkerProcess(settings, f"after-{crash_point}", concurrency=1)
    survivor.start(producer)
    try:
        wait_for(lambda: not pending_flush_keys(redis_client), timeout=60, what="every window persisted")
        wait_until_idle(producer, survivor, TASK_QUEUES)
    finally:
        survivor.stop()

    assert persisted_sums(database) == ledger.expected()
    assert flush_batches(database) == 4  # three hours, and the late pulses' fresh window
    assert pending_flush_keys(redis_client) == []
