"""Reads of usage while pulses arrive and flushes run (some killed mid-way): the
exactly-once harness shared by the pending-read tests and the usage endpoint's.

`Ingest` counts pulses through the real PulseCounter and keeps its own ledger.
`reads_during_ingest_and_killed_flushes(read, ...)` runs ingest threads and a flush
loop, SIGKILLs a flush process after its rename and another after its commit, and
holds every `read(tenants)` to: at least what was counted before it began, at most
what was sent to Redis before it ended, never less than the read before it; once
ingest pauses, exactly the ledger, before and after a last flush.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from flask import Flask

from ingestor.pulses import keys
from ingestor.pulses.persistence import Persister
from ingestor.settings import settings_of
from tests.support.services import settings_env
from tests.support.windows import countable

ROOT = Path(__file__).resolve().parents[2]

Totals = dict[str, tuple[int, int]]  # tenant -> (micro-units, pulses)
# A read of the usage of the tenants given (None: all) as Totals.
Read = Callable[[list[str] | None], Totals]


class Ingest:
    """Counts pulses through the real PulseCounter and keeps its own ledger: what was
    sent to Redis (`started`) and what Redis had answered for (`done`)."""

    def __init__(self, counter, default_hour: datetime) -> None:
        self.counter = counter
        self.default_hour = default_hour
        self.lock = threading.Lock()
        self.started: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self.done: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self.sequence = 0

    def count(
        self, tenant: str, n: int = 1, hour: datetime | None = None, micro_units: int = 1_234_567
    ) -> None:
        with self.lock:
            first = self.sequence
            self.sequence += n
            self._add(self.started, tenant, n, micro_units)
        hour = hour or self.default_hour
        pulses = [countable(tenant, f"p{first + i}", hour, micro_units + i) for i in range(n)]
        assert self.counter.count(pulses) == n
        with self.lock:
            self._add(self.done, tenant, n, micro_units)

    @staticmethod
    def _add(ledger, tenant: str, n: int, micro_units: int) -> None:
        ledger[tenant][0] += n * micro_units + n * (n - 1) // 2
        ledger[tenant][1] += n

    def snapshot(self, ledger) -> Totals:
        with self.lock:
            return {tenant: (micro, count) for tenant, (micro, count) in ledger.items()}


def bucket_mates(tenant: str, how_many: int) -> list[str]:
    """Other tenants in `tenant`'s bucket."""
    mates, i = [], 0
    while len(mates) < how_many:
        candidate = f"mate-{i}"
        if keys.bucket_of(candidate) == keys.bucket_of(tenant):
            mates.append(candidate)
        i += 1
    return mates


def crash_flush(settings, crash_point: str, marker: Path) -> None:
    """A flush in a process of its own, SIGKILLed at `crash_point` (crash_worker.py)."""
    env = {
        **os.environ,
        **settings_env(settings),
        "CRASH_POINT": crash_point,
        "CRASH_MARKER": str(marker),
    }
    code = (
        "from tests.support.crash_worker import _flask_app\n"
        "_flask_app.extensions['pulses'].persister.persist_pending()\n"
    )
    # A session of its own: the crash kills its whole process group, not pytest.
    process = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, start_new_session=True, timeout=120, check=False
    )
    assert process.returncode == -signal.SIGKILL, f"the flush was to die at {crash_point}"


def exceeds(left: Totals, right: Totals) -> dict[str, tuple]:
    """Tenants where `left` holds more (micro-units or pulses) than `right`."""
    return {
        tenant: (value, right.get(tenant, (0, 0)))
        for tenant, value in left.items()
        if value[0] > right.get(tenant, (0, 0))[0] or value[1] > right.get(tenant, (0, 0))[1]
    }


def reads_during_ingest_and_killed_flushes(
    read: Read,
    app: Flask,
    ingest: Ingest,
    hours: list[datetime],
    tmp_path: Path,
    *,
    seconds: float = 12,
    min_reads: int = 50,
    reads_between_crashes: int = 30,
) -> Counter[str]:
    """The exactly-once proof for `read` (see the module docstring), pulses counted in
    `hours` by `ingest` and flushed by `app`'s persister; the reads made, by kind."""
    settings = settings_of(app)
    redis_client = app.extensions["redis"]
    persister: Persister = app.extensions["pulses"].persister
    tenants = ["acme", "globex", *bucket_mates("acme", 2)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def keep_ingesting(seed: int) -> None:
        i = seed
        try:
            while not stop.is_set():
                ingest.count(tenants[i % len(tenants)], 1 + i % 7, hour=hours[i % len(hours)])
                i += 1
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    in_process_flush = threading.Lock()  # held while a doomed process flushes

    def keep_flushing() -> None:
        try:
            while not stop.is_set():
                with in_process_flush:
                    persister.persist_pending()
                time.sleep(0.005)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=keep_ingesting, args=(seed,)) for seed in range(2)]
    threads.append(threading.Thread(target=keep_flushing))
    for thread in threads:
        thread.start()
    reads: Counter[str] = Counter()
    previous: dict[str | None, Totals] = {}
    crashes = ["before_commit", "after_commit"]

    def one_read(tenants_read: list[str] | None) -> None:
        floor = ingest.snapshot(ingest.done)
        got = read(tenants_read)
        ceiling = ingest.snapshot(ingest.started)
        if tenants_read is not None:
            floor = {t: v for t, v in floor.items() if t in tenants_read}
        assert exceeds(floor, got) == {}, "a pulse counted before the read is missing"
        assert exceeds(got, ceiling) == {}, "a pulse counted twice, or one never sent"
        key = None if tenants_read is None else tenants_read[0]
        assert exceeds(previous.get(key, {}), got) == {}, "a total went down"
        previous[key] = got
        reads["reads"] += 1

    try:
        deadline = time.monotonic() + seconds
        while (time.monotonic() < deadline or crashes) and not errors:
            one_read(None)
            one_read(["acme"])
            if crashes and reads["reads"] >= reads_between_crashes * (3 - len(crashes)):
                point = crashes.pop(0)
                with in_process_flush:
                    # A killed run's lock lives on for 3 s (crash_worker.py).
                    while redis_client.exists(keys.FLUSH_LOCK):
                        time.sleep(0.05)
                    crash_flush(settings, point, tmp_path / point)
                reads[point] += 1
                one_read(None)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert errors == []
    assert reads["before_commit"] == reads["after_commit"] == 1, reads
    assert reads["reads"] > min_reads, reads

    # Ingest paused: exact, before and after the last flush.
    assert read(None) == ingest.snapshot(ingest.done)
    time.sleep(3.5)  # the killed run's lock (crash_worker: 3 s)
    assert not persister.persist_pending().skipped
    assert read(None) == ingest.snapshot(ingest.done)
    assert ingest.snapshot(ingest.done) == ingest.snapshot(ingest.started)
    return reads
