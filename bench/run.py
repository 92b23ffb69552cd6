"""`make bench`: the real system on this machine, measured in one run, one table.

Every figure comes from real processes on the machine's PostgreSQL, Redis and
RabbitMQ, in resources of the benchmark's own (database `pulse_ingestor_bench`, Redis
db 13, vhost `pulse_ingestor_bench`; `BENCH_DATABASE_URL`, `BENCH_REDIS_URL` and
`BENCH_RABBITMQ_VHOST` point them elsewhere, so two runs can share a machine).
Throughputs are ratios against a naive baseline measured in the same run, so they
compare on any machine; absolute targets are this 2-core machine's. The table is
printed and written to bench/results/<time>.json.

Worker throughput is timed from the first pulse counted to the last, with the
messages queued beforehand: worker start-up is not in the figure.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import quote

from celery import Celery
from kombu import Connection
from redis import RedisCluster
from redis.cluster import ClusterNode
from sqlalchemy import text

from bench.pulses import count_pending_groups, one_group_pulse
from bench.report import Report, Row, latency_row, percentile
from bench.serving import create_bench_user, gunicorn_api
from bench.usage import bench_usage
from ingestor import create_app
from ingestor.database import upgrade_schema
from ingestor.messaging.topology import ALL_QUEUES, QUORUM, declare_topology, raw_queue
from ingestor.pulses import keys
from ingestor.pulses.aggregation import CountablePulse, PulseCounter, pulse_with_id
from ingestor.pulses.keyset import encode_cursor
from ingestor.pulses.pending import begin_usage_snapshot, read_pending_usage
from ingestor.pulses.schema import rejection_codes
from ingestor.pulses.task_names import INGEST_PULSE, INGEST_PULSES
from ingestor.settings import Settings
from tests.support.rabbit_cluster import RabbitCluster, rabbitmq_server
from tests.support.redis_cluster import PrivateRedisCluster
from tests.support.services import recreate_database, recreate_vhost
from tests.support.worker import WorkerProcess

DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/pulse_ingestor_bench"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
VHOST = os.environ.get("BENCH_RABBITMQ_VHOST", "pulse_ingestor_bench")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


class Bench:
    """The benchmark's services, app and helpers."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        broker_url = recreate_vhost(VHOST)
        recreate_database(DATABASE_URL)
        upgrade_schema(DATABASE_URL)
        # Warnings only: the query measurements make thousands of requests.
        self.settings = Settings(
            database_url=DATABASE_URL, redis_url=REDIS_URL, broker_url=broker_url, log_level="WARNING"
        ).validated()
        self.app = create_app(self.settings)
        self.redis = self.app.extensions["redis"]
        self.database = self.app.extensions["database"]
        self.producer = Celery("bench-producer", broker=broker_url, set_as_current=False)
        self.hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        with Connection(broker_url) as connection:
            declare_topology(connection)
        self.reset()

    def reset(self) -> None:
        """Empty Redis db, tables and queues."""
        self.redis.flushdb()
        with self.database.engine.begin() as connection:
            connection.execute(text("TRUNCATE pulse_usage, flush_batch, rejected_pulse RESTART IDENTITY"))
        with Connection(self.settings.broker_url) as connection:
            for queue in (*ALL_QUEUES, raw_queue(self.settings.raw_queue)):
                queue.bind(connection.default_channel).purge()
            connection.default_channel.queue_delete("naive")

    def pulse(self, n: int, tenant_count: int = 100) -> dict:
        return {
            "id": f"bench-{n}",
            "tenant": f"tenant-{n % tenant_count}",
            "product_sku": "vm.small",
            "use_unity": "vCPU-hour",
            "used_amount": f"{n % 1000}.{n % 999999:06d}",
            "timestamp": self.hour.isoformat(),
        }

    def worker(self, name: str, app: str = "ingestor", settings: Settings | None = None) -> WorkerProcess:
        return WorkerProcess(
            settings or self.settings,
            f"bench-{name}",
            concurrency=os.cpu_count() or 2,
            app=app,
            extra_env={"REDIS_URL": REDIS_URL},
        )

    def time_consumption(
        self,
        worker: WorkerProcess | list[WorkerProcess],
        counted: Callable[[], int],
        total: int,
        control: Celery | None = None,
    ) -> float:
        """Start `worker` (or several) on the queued messages; pulses/s from the first counted
        to the last. With several, the clock starts once they all answer a ping.

        `control`: a Celery app on the worker's vhost (default: the bench's), to ping it.
        """
        workers = worker if isinstance(worker, list) else [worker]
        try:
            for started_worker in workers:
                started_worker.start(control or self.producer)
            deadline = time.monotonic() + self.args.timeout
            while (first := counted()) == 0:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nothing counted:\n{workers[0].tail()}")
                time.sleep(0.002)
            started = time.monotonic()
            while (done := counted()) < total:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{done}/{total} counted:\n{workers[0].tail()}")
                time.sleep(0.005)
            elapsed = time.monotonic() - started
        finally:
            for started_worker in workers:
                started_worker.stop()
        return (total - first) / elapsed

    def ids_counted(self) -> int:
        """Pulses with an id counted so far: the id totals of the index's buckets (one
        small hash, so polling it costs Redis next to nothing)."""
        return keys.ids_in_index(self.redis.hgetall(keys.id_index_key(keys.SHARD_TAGS[0])))

    @property
    def bench_buckets(self) -> set[int]:
        return {keys.bucket_of(f"tenant-{n}") for n in range(100)}


def bench_baseline(bench: Bench, report: Report) -> float:
    n = bench.args.baseline_pulses
    bench.reset()
    for i in range(n):
        pulse = {**bench.pulse(i), "used_amount": 1}
        bench.producer.send_task("naive.ingest_pulse", args=[pulse], queue="naive")

    def counted() -> int:
        return sum(int(v) for v in bench.redis.hvals("naive:window"))

    rate = bench.time_consumption(bench.worker("naive", app="bench.naive"), counted, n)
    report.add(
        Row("baseline: naive task per pulse (HINCRBY, late ack)", rate, "pulses/s", detail=f"{n:,} pulses")
    )
    return rate


def _ingest_pulses_rate(
    bench: Bench, settings: Settings | None = None, producer: Celery | None = None
) -> float:
    """pulses/s of ingest_pulses batches through `settings`' broker (default: the bench's)."""
    n, size = bench.args.pulses, bench.args.batch_size
    producer = producer or bench.producer
    bench.reset()
    for start in range(0, n, size):
        batch = [bench.pulse(i) for i in range(start, min(n, start + size))]
        producer.send_task(INGEST_PULSES, args=[batch], exchange="pulses", routing_key="pulses")
    worker = bench.worker("batches", settings=settings)
    return bench.time_consumption(worker, bench.ids_counted, n, control=producer)


def bench_ingest_pulses(bench: Bench, report: Report, baseline: float) -> None:
    n, size = bench.args.pulses, bench.args.batch_size
    rate = _ingest_pulses_rate(bench)
    report.add(
        Row(
            f"{INGEST_PULSES} (validated, deduped, late ack)",
            rate,
            "pulses/s",
            "≥ 30,000",
            rate >= 30_000,
            f"{n:,} pulses in batches of {size}",
        )
    )
    ratio = rate / baseline
    report.add(Row("  ratio to the baseline", ratio, "×", "≥ 25×", ratio >= 25))


def bench_quorum(bench: Bench, report: Report) -> None:
    """ingest_pulses on quorum task queues (BROKER_QUEUE_TYPE=quorum, one node) against classic."""
    _quorum_against_classic(bench, report, recreate_vhost(f"{VHOST}_quorum"), "quorum queues", "quorum")


def bench_quorum_cluster(bench: Bench, report: Report) -> None:
    """ingest_pulses on quorum task queues of a private 3-node cluster against classic on one node.

    What replication costs: each message is written on two of three nodes before it is
    confirmed, and each ack travels the same way. Skipped without `rabbitmq-server`.
    """
    if rabbitmq_server() is None:
        print("quorum-cluster: skipped, rabbitmq-server is not installed", flush=True)
        return
    with RabbitCluster() as cluster:
        cluster.add_vhost(VHOST)
        _quorum_against_classic(
            bench,
            report,
            cluster.broker_url(quote(VHOST, safe="")),
            "quorum queues, 3-node cluster",
            "3-node quorum",
        )


def _quorum_against_classic(bench: Bench, report: Report, broker_url: str, what: str, short: str) -> None:
    """ingest_pulses on quorum task queues at `broker_url` against classic ones on the bench's node.

    Interleaved rounds, medians: both share the machine's noise alike.
    """
    with Connection(broker_url) as connection:
        declare_topology(connection, queue_type=QUORUM)
    settings = replace(bench.settings, broker_url=broker_url, broker_queue_type=QUORUM)
    producer = Celery("bench-quorum-producer", broker=broker_url, set_as_current=False)
    classic, quorum = [], []
    for _ in range(bench.args.worker_rounds):
        classic.append(_ingest_pulses_rate(bench))
        quorum.append(_ingest_pulses_rate(bench, settings, producer))
    producer.close()
    detail = f"{bench.args.pulses:,} pulses in batches of {bench.args.batch_size}, median of {len(quorum)}"
    report.add(
        Row(f"{INGEST_PULSES} on classic queues", statistics.median(classic), "pulses/s", detail=detail)
    )
    report.add(Row(f"{INGEST_PULSES} on {what}", statistics.median(quorum), "pulses/s", detail=detail))
    ratio = statistics.median(quorum) / statistics.median(classic)
    report.add(Row(f"  {short} to classic", ratio, "×"))


def bench_redis_cluster(bench: Bench, report: Report) -> None:
    """ingest_pulses on a private Redis Cluster (3 masters, 3 replicas, 16 tags), without
    and with REDIS_WAIT_REPLICAS=1, against the bench's single Redis.

    Interleaved rounds, medians; the six redis-server processes share the machine's
    cores with the worker, as the single Redis does.
    """
    with PrivateRedisCluster() as cluster:
        client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", port) for port in cluster.ports])
        index_keys = [keys.id_index_key(tag) for tag in keys.shard_tags(keys.CLUSTER_SHARD_TAG_COUNT)]

        def counted() -> int:
            with client.pipeline(transaction=False) as pipe:
                for key in index_keys:
                    pipe.hgetall(key)
                indexes = pipe.execute()
            return sum(keys.ids_in_index(fields) for fields in indexes)

        def rate(wait_replicas: int) -> float:
            n, size = bench.args.pulses, bench.args.batch_size
            bench.reset()
            cluster.flush()
            for start in range(0, n, size):
                batch = [bench.pulse(i) for i in range(start, min(n, start + size))]
                bench.producer.send_task(INGEST_PULSES, args=[batch], exchange="pulses", routing_key="pulses")
            settings = replace(bench.settings, redis_url=cluster.url, redis_wait_replicas=wait_replicas)
            worker = WorkerProcess(
                settings, f"bench-cluster-{wait_replicas}", concurrency=os.cpu_count() or 2
            )
            return bench.time_consumption(worker, counted, n)

        single, plain, waiting = [], [], []
        for _ in range(bench.args.worker_rounds):
            single.append(_ingest_pulses_rate(bench))
            plain.append(rate(0))
            waiting.append(rate(1))
        client.close()
    detail = f"{bench.args.pulses:,} pulses in batches of {bench.args.batch_size}, median of {len(single)}"
    for what, rates in (
        ("one Redis", single),
        ("a 3+3 Redis Cluster", plain),
        ("a 3+3 Redis Cluster, REDIS_WAIT_REPLICAS=1", waiting),
    ):
        report.add(Row(f"{INGEST_PULSES} on {what}", statistics.median(rates), "pulses/s", detail=detail))
    report.add(Row("  cluster to one Redis", statistics.median(plain) / statistics.median(single), "×"))
    report.add(
        Row("  cluster with WAIT to one Redis", statistics.median(waiting) / statistics.median(single), "×")
    )


def _ingest_pulse_rate(bench: Bench) -> float:
    n = bench.args.single_pulses
    bench.reset()
    for i in range(n):
        bench.producer.send_task(INGEST_PULSE, args=[bench.pulse(i)], exchange="pulses", routing_key="pulses")
    return bench.time_consumption(bench.worker("single"), bench.ids_counted, n)


def _queue_raw_messages(bench: Bench) -> str:
    """Empty everything, then queue the raw queue's messages: one small pulse each."""
    bench.reset()
    queue = raw_queue(bench.settings.raw_queue)
    with Connection(bench.settings.broker_url) as connection:
        producer = connection.Producer()
        for i in range(bench.args.raw_pulses):
            producer.publish(
                json.dumps(bench.pulse(i)),
                exchange="",
                routing_key=queue.name,
                content_type="application/json",
                delivery_mode=2,
                declare=[queue] if i == 0 else [],
            )
    return queue.name


def _raw_queue_rate(bench: Bench, processes: int = 1) -> float:
    """pulses/s of `processes` worker processes (`celery worker`, each its raw consumer) on the queue."""
    _queue_raw_messages(bench)
    workers = [bench.worker(f"raw-{n}") for n in range(processes)]
    return bench.time_consumption(workers, bench.ids_counted, bench.args.raw_pulses)


# The reference consumers of the raw queue, each on a client installed by the bench,
# pinned, into a git-ignored directory (never a dependency of the project): Node's
# amqplib (pure JS, JIT-compiled) and librabbitmq-fork (Python over rabbitmq-c, in C).
# The faster of the two in each round is the limit.
AMQPLIB = "amqplib@2.3.1"
LIBRABBITMQ = "librabbitmq-fork==2.0.2.dev3"
REFERENCE_DIR = ROOT / "bench" / ".reference"
REFERENCE_SOURCES = ROOT / "bench" / "reference"


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, a dict key
class ReferenceConsumer:
    """A minimal consumer of the raw queue: JSON decode and batch ack, nothing else."""

    name: str
    program: str  # what runs it: node, or this Python
    source: str  # bench/reference/<source>
    installed: Path  # exists once its client is installed
    install: list[str]  # the command that installs it
    env: dict[str, str]

    def missing(self) -> str | None:
        """Why it cannot run here (None: it can, its client installed now if it was not)."""
        import shutil
        import subprocess

        tool = self.install[0]
        if not shutil.which(self.program) or not shutil.which(tool):
            return f"{self.program} and {tool} are needed"
        if not self.installed.exists():
            done = subprocess.run(self.install, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                return f"{' '.join(self.install[:2])} failed: {done.stderr.strip()[-200:]}"
        return None

    def rate(self, bench: Bench) -> float:
        """msg/s on the bench's raw messages, with the raw consumer's prefetch (twice the
        batch) and one `basic.ack(multiple=True)` per batch; first delivery to last."""
        import subprocess
        from urllib.parse import unquote, urlsplit

        queue = _queue_raw_messages(bench)
        batch = bench.settings.raw_batch_size
        url = urlsplit(bench.settings.broker_url)
        if self.program == "node":
            where = [bench.settings.broker_url]
        else:
            where = [
                f"{url.hostname}:{url.port or 5672}",
                unquote(url.username or ""),
                unquote(url.password or ""),
            ]
            where.append(unquote(url.path[1:]) or "/")
        counts = [str(bench.args.raw_pulses), str(2 * batch), str(batch)]
        command = [self.program, str(REFERENCE_SOURCES / self.source), *where, queue, *counts]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env={**os.environ, **self.env},
            timeout=bench.args.timeout,
            check=True,
        )
        return float(json.loads(done.stdout.strip().splitlines()[-1])["rate"])


REFERENCES = (
    ReferenceConsumer(
        f"Node {AMQPLIB}",
        "node",
        "raw_consumer.js",
        REFERENCE_DIR / "node_modules" / "amqplib",
        ["npm", "install", "--prefix", str(REFERENCE_DIR), "--no-audit", "--no-fund", AMQPLIB],
        {"NODE_PATH": str(REFERENCE_DIR / "node_modules")},
    ),
    ReferenceConsumer(
        f"Python {LIBRABBITMQ} (C)",
        sys.executable,
        "raw_consumer_c.py",
        REFERENCE_DIR / "python" / "librabbitmq",
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(REFERENCE_DIR / "python"),
            LIBRABBITMQ,
        ],
        {"PYTHONPATH": str(REFERENCE_DIR / "python")},
    ),
)


def bench_ingest_pulse_and_raw(bench: Bench, report: Report, baseline: float, raw: bool) -> None:
    """`ingest_pulse`, the raw queue and its references, interleaved round by round; medians.

    A worker's rate moves by +-20% between runs on this machine; one slow moment on
    either side would move the ratio by as much.
    """
    rounds = bench.args.worker_rounds
    missing = {reference: reference.missing() for reference in REFERENCES} if raw else {}
    references = [reference for reference, why in missing.items() if why is None]
    singles: list[float] = []
    raws: list[float] = []
    raws_in_two: list[float] = []
    reference_rates: dict[ReferenceConsumer, list[float]] = {reference: [] for reference in references}
    for _ in range(rounds):
        singles.append(_ingest_pulse_rate(bench))
        if raw:
            raws.append(_raw_queue_rate(bench))
            raws_in_two.append(_raw_queue_rate(bench, processes=2))
            for reference in references:
                reference_rates[reference].append(reference.rate(bench))
    single = statistics.median(singles)
    report.add(
        Row(
            f"{INGEST_PULSE} (one pulse per message)",
            single,
            "pulses/s",
            detail=f"{bench.args.single_pulses:,} messages, median of {rounds}, "
            f"{single / baseline:.1f}× baseline",
        )
    )
    if not raw:
        return
    rate = statistics.median(raws)
    ratio = rate / single
    report.add(
        Row(
            "raw queue pulses.raw (one pulse per message)",
            rate,
            "pulses/s",
            "≥ 10× ingest_pulse",
            ratio >= 10,
            f"{bench.args.raw_pulses:,} messages, median of {rounds} "
            f"({min(raws):,.0f}-{max(raws):,.0f}), {ratio:.1f}× ingest_pulse",
        )
    )
    two = statistics.median(raws_in_two)
    report.add(
        Row(
            "raw queue, two worker processes (one raw consumer each)",
            two,
            "pulses/s",
            detail=f"median of {rounds} ({min(raws_in_two):,.0f}-{max(raws_in_two):,.0f}), "
            f"{two / rate:.2f}× one process",
        )
    )
    for reference, why in missing.items():
        name = f"reference: {reference.name}, JSON decode + batch ack"
        if why is not None:
            report.add(Row(f"{name} (skipped)", 0, "msg/s", detail=why))
            continue
        rates = reference_rates[reference]
        report.add(
            Row(
                name,
                statistics.median(rates),
                "msg/s",
                detail=f"same messages, prefetch and acks, median of {rounds} "
                f"({min(rates):,.0f}-{max(rates):,.0f})",
            )
        )
    if not references:
        return
    # Each round's limit: the faster reference of that round.
    limits = [max(rates) for rates in zip(*reference_rates.values(), strict=True)]
    for label, measured, target in (("", raws, True), (" in two worker processes", raws_in_two, False)):
        ratios = sorted(r / limit for r, limit in zip(measured, limits, strict=True))
        ratio = statistics.median(ratios)
        report.add(
            Row(
                f"  raw queue{label} to the faster reference",
                ratio,
                "×",
                "≥ 0.7" if target else "",
                ratio >= 0.7 if target else None,
                f"median of the rounds' ratios ({ratios[0]:.2f}-{ratios[-1]:.2f})",
            )
        )


def bench_http(bench: Bench, report: Report) -> None:
    """POST /api/v1/pulses under gunicorn, 1000-pulse bodies from concurrent clients."""
    bench.reset()
    create_bench_user(bench.database)
    with gunicorn_api(bench.settings) as (port, token):
        bodies = [
            json.dumps([{**bench.pulse(i), "id": f"http-{r}-{i}"} for i in range(1000)]).encode()
            for r in range(bench.args.http_clients)
        ]
        latencies: list[float] = []
        accepted = [0]
        lock = threading.Lock()

        def client(index: int) -> None:
            connection = HTTPConnection("127.0.0.1", port, timeout=60)
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            for _ in range(bench.args.http_requests // bench.args.http_clients):
                started = time.perf_counter()
                connection.request("POST", "/api/v1/pulses", body=bodies[index], headers=headers)
                response = connection.getresponse()
                body = json.loads(response.read())
                elapsed = time.perf_counter() - started
                assert response.status == 202, body
                with lock:
                    latencies.append(elapsed)
                    accepted[0] += body["accepted"]
            connection.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(bench.args.http_clients)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - started
    report.add(
        Row(
            "POST /api/v1/pulses (gunicorn, 1000-pulse bodies)",
            accepted[0] / wall,
            "pulses/s",
            detail=f"{len(latencies)} requests, {bench.args.http_clients} clients, "
            f"p50 {percentile(latencies, 0.5) * 1000:.0f} ms, "
            f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms",
        )
    )


REFERENCE_UPSERT = (
    "INSERT INTO pulse_usage (tenant, product_sku, use_unity, window_start, used_amount, pulse_count) "
    "SELECT * FROM incoming ON CONFLICT (tenant, product_sku, use_unity, window_start) DO UPDATE SET "
    "used_amount = pulse_usage.used_amount + excluded.used_amount, "
    "pulse_count = pulse_usage.pulse_count + excluded.pulse_count, updated_at = now()"
)


def _persist_once(bench: Bench, groups: int) -> float:
    """Seconds our flush takes to move `groups` groups of one window from Redis to PostgreSQL."""
    services = bench.app.extensions["pulses"]
    pulses = [one_group_pulse(bench.hour, f"persist-{uuid.uuid4()}", g, f"tenant-{g}") for g in range(groups)]
    for start in range(0, groups, 5000):
        services.counter.count(pulses[start : start + 5000])
    started = time.perf_counter()
    result = services.persister.persist_pending()
    elapsed = time.perf_counter() - started
    assert result.groups == groups, result
    return elapsed


def _reference_once(bench: Bench, groups: int) -> float:
    """Seconds a plain COPY into a temporary table + INSERT ... SELECT ... ON CONFLICT takes
    for the same rows, the data already in memory.

    In an arbitrary order, as any hash-keyed store hands groups out: PostgreSQL writes
    rows already in index order ~30% faster, an order no flush is ever given.
    """
    rows = [
        f"tenant-{g}\tvm.small\tvCPU-hour\t{bench.hour.isoformat()}\t{(1_000_000 + g) / 10**6:.6f}\t1\n"
        for g in range(groups)
    ]
    random.Random(groups).shuffle(rows)
    buffer = "".join(rows)
    raw = bench.database.engine.raw_connection()
    try:
        started = time.perf_counter()
        cursor = raw.cursor()
        cursor.execute(
            "CREATE TEMP TABLE incoming (tenant text, product_sku text, use_unity text, "
            "window_start timestamptz, used_amount numeric(38,6), pulse_count bigint) ON COMMIT DROP"
        )
        cursor.copy_expert("COPY incoming FROM STDIN", io.StringIO(buffer))
        cursor.execute(REFERENCE_UPSERT)
        raw.commit()
        return time.perf_counter() - started
    finally:
        raw.close()


def bench_persist(bench: Bench, report: Report) -> None:
    """Both flush paths against the reference, interleaved round by round; medians.

    A window's first flush (no row yet) and a flush into a window that already has
    every row (each group updated). The machine's noise moves single runs by +-30%:
    interleaving and the median keep a slow moment from landing on one side only.
    """
    groups, rounds = bench.args.persist_groups, bench.args.persist_rounds
    timings: dict[str, list[float]] = {"ours-first": [], "ref-first": [], "ours-again": [], "ref-again": []}
    for _ in range(rounds):
        # Each "again" starts from the rows of one of our first flushes: a COPY leaves
        # its pages out of shared buffers, an INSERT leaves them in, and the state of
        # the table, not the writer, would otherwise make the difference.
        bench.reset()
        timings["ours-first"].append(_persist_once(bench, groups))
        timings["ours-again"].append(_persist_once(bench, groups))
        bench.reset()
        timings["ref-first"].append(_reference_once(bench, groups))
        bench.reset()
        timings["ours-first"].append(_persist_once(bench, groups))
        timings["ref-again"].append(_reference_once(bench, groups))
    median = {name: statistics.median(values) for name, values in timings.items()}
    for path, label in (("first", "a window's first flush"), ("again", "into a window that has the rows")):
        ours, reference = groups / median[f"ours-{path}"], groups / median[f"ref-{path}"]
        # The 40,000 rows/s target is the issue's, for a window's first flush. Updating
        # rows that exist costs PostgreSQL itself about twice as much: only the ratio.
        target = ("≥ 40,000", ours >= 40_000) if path == "first" else ("", None)
        report.add(
            Row(
                f"persist: Redis → PostgreSQL, {label}",
                ours,
                "rows/s",
                *target,
                f"{groups:,} groups of one window, median of {rounds}",
            )
        )
        ratio = ours / reference
        report.add(
            Row(
                "  ratio to plain COPY + INSERT…SELECT…ON CONFLICT",
                ratio,
                "×",
                "≥ 0.8",
                ratio >= 0.8,
                f"reference {reference:,.0f} rows/s, rows in arbitrary order",
            )
        )


def bench_queries(bench: Bench, report: Report) -> None:
    rows = bench.args.query_rows
    bench.reset()
    with bench.database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO pulse_usage (tenant, product_sku, use_unity, window_start, used_amount, pulse_count) "
                "SELECT 'tenant-' || (g % 1000), 'sku-' || (g / 1000 % 10), 'GB', "
                "timestamptz '2026-01-01 00:00+00' + make_interval(hours => g / 10000), (g % 100000) / 1000.0, "
                "1 + g % 7 FROM generate_series(0, :rows - 1) g"
            ),
            {"rows": rows},
        )
    with bench.database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE pulse_usage"))
    timed = ApiTimer(bench).get

    def measure(name: str, urls: list[str], target: bool = True) -> None:
        report.add(latency_row(name, [timed(url)[0] for url in urls], target))

    repeats = bench.args.query_repeats
    measure(f"GET /api/v1/pulses first page ({rows:,} rows)", ["/api/v1/pulses"] * repeats)
    measure("GET /api/v1/pulses filtered (tenant)", ["/api/v1/pulses?tenant=tenant-42"] * repeats)
    # A cursor walk: every page of the first N, then every page of N from deep inside.
    walk: list[float] = []
    for start_cursor in ("", _deep_cursor(bench, rows * 9 // 10)):
        url = "/api/v1/pulses?limit=100" + (f"&cursor={start_cursor}" if start_cursor else "")
        for _ in range(repeats):
            elapsed, body = timed(url)
            walk.append(elapsed)
            url = f"/api/v1/pulses?limit=100&cursor={body['next_cursor']}"
    report.add(
        latency_row("GET /api/v1/pulses cursor walk (limit 100, top and 90% deep)", walk, what="pages")
    )
    deep_page = rows * 9 // 10 // 100
    measure(
        f"GET /api/v1/pulses?page={deep_page}&limit=100 (OFFSET, for contrast)",
        [f"/api/v1/pulses?page={deep_page}&limit=100"] * max(5, repeats // 10),
        target=False,
    )


# The messages of a few common rejections, as the schema writes them.
_REJECTION_ERRORS = (
    '{"used_amount": ["Must not be negative."]}',
    '{"used_amount": ["Must have at most 6 fractional digits."]}',
    '{"tenant": ["Missing data for required field."]}',
    '{"use_unity": ["Must be 1 to 32 characters long, got 40."], "used_amount": ["Not a valid decimal number."]}',
    # The rare one, last.
    '{"timestamp": ["Is older than the late limit of 35 days: that hour is closed."]}',
)


def bench_rejected(bench: Bench, report: Report) -> None:
    """GET /api/v1/rejected-pulses over a large quarantine: pages, filters, a deep cursor walk."""
    rows = bench.args.rejected_rows
    bench.reset()
    errors = "ARRAY[" + ", ".join(f"'{e}'::jsonb" for e in _REJECTION_ERRORS) + "]"
    # As the worker stores them: the codes of each errors value (comma-joined, split by row).
    codes = (
        "ARRAY[" + ", ".join(f"'{','.join(rejection_codes(json.loads(e)))}'" for e in _REJECTION_ERRORS) + "]"
    )
    with bench.database.engine.begin() as connection:
        # 1,000 tenants over 30 days; one in a thousand rejections is too old (a rare reason).
        connection.execute(
            text(
                "INSERT INTO rejected_pulse"
                " (received_at, source, message_id, position, tenant, payload, errors, reason_codes) "
                "SELECT timestamptz '2026-11-01 00:00+00' + make_interval(secs => g * 2592000.0 / :rows), "
                "CASE WHEN g % 4 = 0 THEN 'raw:pulses.raw' ELSE 'ingestor.ingest_pulses' END, "
                "'bench-' || (g / 10), g % 10, 'tenant-' || (g % 1000), "
                '\'{"tenant": "tenant-\' || (g % 1000) || \'", "used_amount": "-1"}\', '
                f"CASE WHEN g % 1000 = 7 THEN ({errors})[5] ELSE ({errors})[1 + g % 4] END, "
                f"string_to_array(CASE WHEN g % 1000 = 7 THEN ({codes})[5] ELSE ({codes})[1 + g % 4] END, ',') "
                "FROM generate_series(0, :rows - 1) g"
            ).bindparams(rows=rows)
        )
    with bench.database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE rejected_pulse"))
    timed = ApiTimer(bench).get

    def measure(name: str, samples: list[float]) -> None:
        report.add(latency_row(name, samples))

    def walk(query: str, pages: int) -> list[float]:
        """Up to `pages` pages from the top, then as many from 90% deep."""
        samples: list[float] = []
        for cursor in (None, _deep_rejected_cursor(bench, rows * 9 // 10)):
            for _ in range(pages):
                elapsed, body = timed(f"{URL}?limit=100&{query}" + (f"&cursor={cursor}" if cursor else ""))
                samples.append(elapsed)
                if (cursor := body["next_cursor"]) is None:
                    break
        return samples

    URL = "/api/v1/rejected-pulses"
    repeats = bench.args.query_repeats
    measure(f"GET {URL} first page ({rows:,} rows)", [timed(f"{URL}?limit=100")[0] for _ in range(repeats)])
    measure(f"GET {URL} cursor walk (limit 100, top and 90% deep)", walk("", repeats // 2))
    measure(f"GET {URL}?tenant= cursor walk (1 of 1,000 tenants)", walk("tenant=tenant-42", repeats // 2))
    measure(f"GET {URL}?source= (1 of 2 sources)", walk("source=raw:pulses.raw", repeats // 2))
    measure(f"GET {URL}?reason= (common: negative)", walk("reason=negative", repeats // 2))
    measure(f"GET {URL}?reason= (rare: too_old, 1 in 1,000)", walk("reason=too_old", repeats // 10))


class ApiTimer:
    """GET requests through the Flask app in process, timed, as a real user logged in."""

    def __init__(self, bench: Bench) -> None:
        self.client = bench.app.test_client()
        # A real user and a real login: every request looks its token's user up.
        password = "bench password, not a secret"
        with bench.database.engine.begin() as connection:
            connection.execute(text("DELETE FROM api_user"))
        created = bench.app.test_cli_runner().invoke(
            args=["users", "create", "bench", "--password", password]
        )
        assert created.exit_code == 0, created.output
        login = self.client.post("/api/v1/login", json={"username": "bench", "password": password})
        assert login.status_code == 200, login.get_json()
        self.headers = {"Authorization": f"Bearer {login.get_json()['access_token']}"}

    def get(self, url: str) -> tuple[float, dict]:
        """(seconds, JSON body) of one 200 answer."""
        started = time.perf_counter()
        response = self.client.get(url, headers=self.headers)
        elapsed = time.perf_counter() - started
        assert response.status_code == 200, response.get_json()
        return elapsed, response.get_json()


def _deep_rejected_cursor(bench: Bench, offset: int) -> str:
    with bench.database.engine.connect() as connection:
        moment, row_id = connection.execute(
            text(
                "SELECT received_at, id FROM rejected_pulse ORDER BY received_at DESC, id DESC OFFSET :n LIMIT 1"
            ),
            {"n": offset},
        ).one()
    return encode_cursor(moment, row_id)


def _deep_cursor(bench: Bench, offset: int) -> str:
    from sqlalchemy import select

    from ingestor.pulses.models import PulseUsage

    with bench.database.session() as session:
        row = session.scalars(
            select(PulseUsage)
            .order_by(PulseUsage.window_start.desc(), PulseUsage.id.desc())
            .offset(offset)
            .limit(1)
        ).one()
        return encode_cursor(row.window_start, row.id)


def bench_redis_memory(bench: Bench, report: Report) -> None:
    services = bench.app.extensions["pulses"]
    n = bench.args.memory_pulses
    group = keys.group_field("tenant", "vm.small", "vCPU-hour")
    window = keys.window_key(keys.SHARD_TAGS[0], keys.hour_of(bench.hour), "tenant")

    def with_ids() -> list[CountablePulse]:
        return [pulse_with_id("tenant", f"id-{uuid.uuid4()}", window, group, 1) for _ in range(n)]

    per_id, segments = _bytes_per_record_in_a_sized_bucket(bench, with_ids)
    report.add(
        Row(
            "Redis memory per pulse with id held",
            per_id,
            "bytes",
            "≤ 16",
            per_id <= 16,
            f"{n:,} ids in a bucket of the id index sized from its predecessor ({segments}), MEMORY "
            f"USAGE of its keys (v1: ~96); {_per_gb_per_s(per_id * _HELD_PER_HORIZON):,.0f} pulses/s per GB at 24 h",
        )
    )
    body = [{"tenant": "tenant", "product_sku": "vm.small", "use_unity": "vCPU-hour", "used_amount": "1"}]

    def alone() -> list[CountablePulse]:
        return [
            services.validator.split(
                body,
                fallback_key=partial(keys.position_in_message, str(uuid.uuid4())),
                received_at=bench.hour,
            )[0][0]
            for _ in range(n)
        ]

    per_alone, segments = _bytes_per_record_in_a_sized_bucket(bench, alone)
    report.add(
        Row(
            "Redis memory per pulse without id held, one per message",
            per_alone,
            "bytes",
            "≤ 16",
            per_alone <= 16,
            f"{n:,} messages of one pulse in a sized bucket ({segments}), MEMORY USAGE (a ledger "
            f"key each before: ~100); {_per_gb_per_s(per_alone * _HELD_PER_HORIZON):,.0f} pulses/s per GB at 24 h",
        )
    )
    bench.reset()
    per_pulse = _bytes_per_pulse_without_id(bench, n)
    report.add(
        Row(
            "Redis memory per pulse without id held",
            per_pulse,
            "bytes",
            "≤ 1",
            per_pulse <= 1,
            f"{n:,} pulses in messages of 1000, MEMORY USAGE of the ledgers (one per message); "
            f"{_per_gb_per_s(per_pulse):,.0f} pulses/s per GB at a 24 h horizon",
        )
    )
    bench.reset()
    groups = [one_group_pulse(bench.hour, "m", g, f"tenant-{g:06d}") for g in range(n)]
    for start in range(0, n, 5000):
        services.counter.count(groups[start : start + 5000])
    buckets = keys.window_bucket_keys(keys.SHARD_TAGS[0], keys.hour_of(bench.hour))
    held = sum(bench.redis.memory_usage(key, samples=0) or 0 for key in buckets)
    report.add(
        Row(
            "Redis memory per aggregated group",
            held / n,
            "bytes",
            detail=f"{n:,} groups, MEMORY USAGE of the hour's 1024 window buckets",
        )
    )


def _bytes_per_record_in_a_sized_bucket(
    bench: Bench, make_pulses: Callable[[], list[CountablePulse]]
) -> tuple[float, str]:
    """used_memory per pulse recorded in the id index, in the steady state: in a bucket
    sized from a predecessor of as many ids (a first bucket grows segment by segment).
    Returns it and the bucket's segments (partition counts)."""
    bench.reset()
    horizon = 60  # buckets of 30 s: both fills fit in the first one's life
    counter = PulseCounter(bench.redis, dedupe_horizon_seconds=horizon, chunk_size=1000)
    index = keys.id_index_key(keys.SHARD_TAGS[0])

    counter.count(make_pulses())
    stop = keys.parse_id_index(bench.redis.hgetall(index))[-1].stop
    time.sleep(max(0.0, stop - float(bench.redis.time()[0]) + 0.2))
    pulses = make_pulses()
    counter.count(pulses)
    newest = keys.parse_id_index(bench.redis.hgetall(index))[-1]
    held = _bytes_of_keys(bench, f"{index}:{newest.start}:*")
    return held / len(pulses), "segments of " + ",".join(map(str, newest.segments)) + " partitions"


# An id is held from its count to its bucket's end plus a horizon: on average 1 + 1/4
# horizons with buckets of half a horizon, which the steady state pays for.
_HELD_PER_HORIZON = 1 + 1 / (2 * keys.ID_BUCKETS_PER_HORIZON)


def bench_memory_soak(bench: Bench, report: Report) -> None:
    """Ids at a steady rate for several horizons (shortened): Redis memory must level off
    once the first horizon and bucket have passed, old buckets expiring as new fill."""
    horizon, rate, seconds = bench.args.soak_horizon, bench.args.soak_rate, bench.args.soak_seconds
    bench.reset()
    counter = PulseCounter(bench.redis, dedupe_horizon_seconds=horizon, chunk_size=5000)
    group = keys.group_field("tenant", "vm.small", "vCPU-hour")
    window = keys.window_key(keys.SHARD_TAGS[0], keys.hour_of(bench.hour), "tenant")
    index = keys.id_index_key(keys.SHARD_TAGS[0])
    settled = 2 * horizon  # every live bucket sized from a predecessor
    # (seconds in, bytes of the index, ids it holds): memory saws between H and H + H/2
    # of ids as buckets expire, so whole horizons are averaged.
    samples: list[tuple[float, int, int]] = []
    started = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(elapsed * rate) - sent
        if due > 0:
            counter.count([pulse_with_id("tenant", str(uuid.uuid4()), window, group, 1) for _ in range(due)])
            sent += due
        if not samples or elapsed - samples[-1][0] >= 2:
            samples.append((elapsed, _bytes_of_keys(bench, index + "*"), bench.ids_counted()))
        time.sleep(0.05)
    first = [s for s in samples if settled <= s[0] < settled + horizon]
    last = [s for s in samples if s[0] >= seconds - horizon]
    first_bytes = statistics.mean(used for _, used, _ in first)
    last_bytes = statistics.mean(used for _, used, _ in last)
    report.add(
        Row(
            "soak: Redis memory of the id index, last horizon / first settled one",
            last_bytes / first_bytes,
            "×",
            "≤ 1.1",
            last_bytes / first_bytes <= 1.1,
            f"{rate:,} ids/s for {seconds} s, horizon {horizon} s; MEMORY USAGE of the index, means "
            f"{first_bytes / 2**20:.2f} MiB from {settled} s, {last_bytes / 2**20:.2f} MiB over the last {horizon} s",
        )
    )
    per_held = statistics.mean(used / held for _, used, held in last)
    report.add(
        Row(
            "soak: Redis bytes per id held, steady state",
            per_held,
            "bytes",
            "≤ 16",
            per_held <= 16,
            f"the index over the ids it holds, last horizon; per id of one horizon (what a rate costs): "
            f"{last_bytes / (rate * horizon):.1f} bytes, {_per_gb_per_s(last_bytes / (rate * horizon)):,.0f} "
            "pulses/s per GB at a 24 h horizon",
        )
    )


def _per_gb_per_s(bytes_per_pulse: float) -> float:
    """Pulses per second a GB of Redis sustains, each held a 24 h horizon."""
    return 1e9 / (bytes_per_pulse * 24 * 3600)


def _bytes_per_pulse_without_id(bench: Bench, n: int, per_message: int = 1000) -> float:
    """Bytes of ledgers per pulse without id counted, in messages of `per_message`."""
    services = bench.app.extensions["pulses"]
    body = [
        {"tenant": "tenant", "product_sku": "vm.small", "use_unity": "vCPU-hour", "used_amount": "1"}
    ] * per_message
    messages = n // per_message
    for _ in range(messages):
        countable, _ = services.validator.split(
            body, fallback_key=partial(keys.position_in_message, str(uuid.uuid4())), received_at=bench.hour
        )
        services.counter.count(countable)
    ledgers = f"{keys.PREFIX}{{{keys.SHARD_TAGS[0]}}}:m:*"
    return _bytes_of_keys(bench, ledgers) / (messages * per_message)


def _bytes_of_keys(bench: Bench, match: str) -> int:
    """MEMORY USAGE summed over the bench's keys matching `match`: used_memory moves
    with whatever else shares the Redis server."""
    return sum(
        bench.redis.memory_usage(key, samples=0) or 0
        for key in bench.redis.scan_iter(match=match, count=1000)
    )


def bench_pending(bench: Bench, report: Report) -> None:
    """The pending read of one tenant (include_pending), and the flush's RENAME of an hour.

    100,000 pending groups over two live hours (10,000 tenants x 5 skus x 2 hours); one
    tenant's read reads one bucket an hour. Then one tenant holding 100,000 groups
    itself (its bucket read by budgeted HSCAN calls). Then the RENAME of each hour.
    """
    services = bench.app.extensions["pulses"]
    groups, repeats = bench.args.pending_groups, bench.args.query_repeats
    bench.reset()
    hours = [bench.hour - timedelta(hours=1), bench.hour]
    tenants = count_pending_groups(services, hours, groups)
    hour_numbers = [keys.hour_of(at) for at in hours]
    first, end = min(hour_numbers), max(hour_numbers) + 1

    def read(tenant: str) -> float:
        with bench.database.session() as session:
            begin_usage_snapshot(session)
            started = time.perf_counter()
            cells = read_pending_usage(session, bench.redis, [tenant], first, end)
            elapsed = time.perf_counter() - started
            session.rollback()
        assert cells, tenant
        return elapsed

    rng = random.Random(13)
    samples = [read(f"tenant-{rng.randrange(tenants)}") for _ in range(repeats)]
    report.add(latency_row("pending read: one tenant among 100,000 pending groups", samples, what="reads"))

    bench.reset()
    pulses = [one_group_pulse(bench.hour, "hot", g, "hot-tenant", f"sku-{g}") for g in range(groups)]
    for start in range(0, groups, 5000):
        services.counter.count(pulses[start : start + 5000])
    samples = [read("hot-tenant") for _ in range(max(5, repeats // 10))]
    report.add(
        latency_row("pending read: one tenant holding 100,000 pending groups", samples, False, "reads")
    )

    bench.reset()
    renames = []
    for h, at in enumerate(hours):
        more = [one_group_pulse(at, f"rename-{h}", g, f"tenant-{g}") for g in range(groups)]
        for start in range(0, groups, 5000):
            services.counter.count(more[start : start + 5000])
        started = time.perf_counter()
        assert services.persister.take_snapshot(keys.SHARD_TAGS[0], keys.hour_of(at)) is not None
        renames.append((time.perf_counter() - started) * 1000)
    report.add(
        Row(
            "flush: RENAME of one hour's 1024 buckets",
            statistics.median(renames),
            "ms",
            detail=f"{groups:,} groups in the hour, median of {len(renames)}",
        )
    )


# The parts of a run, each selectable with --only.
PARTS = (
    "ingest",
    "raw",
    "http",
    "persist",
    "queries",
    "rejected",
    "memory",
    "memory-soak",
    "pending",
    "quorum",
    "usage",
    "quorum-cluster",
    "redis-cluster",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pulses", type=int, default=200_000, help="pulses for ingest_pulses")
    parser.add_argument("--batch-size", type=int, default=1000, help="pulses per ingest_pulses message")
    parser.add_argument("--baseline-pulses", type=int, default=5_000)
    parser.add_argument("--single-pulses", type=int, default=10_000, help="messages for ingest_pulse")
    parser.add_argument("--raw-pulses", type=int, default=100_000, help="messages for the raw queue")
    parser.add_argument(
        "--worker-rounds",
        type=int,
        default=3,
        help="interleaved rounds of ingest_pulse and the raw queue; medians are reported",
    )
    parser.add_argument("--http-requests", type=int, default=120)
    parser.add_argument("--http-clients", type=int, default=4)
    parser.add_argument("--persist-groups", type=int, default=100_000)
    parser.add_argument(
        "--persist-rounds", type=int, default=3, help="interleaved rounds; the median is reported"
    )
    parser.add_argument("--query-rows", type=int, default=1_000_000)
    parser.add_argument("--rejected-rows", type=int, default=1_000_000, help="rows of rejected_pulse")
    parser.add_argument("--query-repeats", type=int, default=200, help="requests per query measurement")
    # Just under 2**17: Redis's key tables are then nearly full, as they are most of
    # the time; right after a table doubles, each key carries twice the bucket space.
    parser.add_argument("--memory-pulses", type=int, default=130_000)
    parser.add_argument("--soak-horizon", type=int, default=30, help="dedupe horizon (s) of the memory soak")
    parser.add_argument("--soak-rate", type=int, default=2000, help="ids/s of the memory soak")
    parser.add_argument("--soak-seconds", type=int, default=180, help="length of the memory soak")
    parser.add_argument(
        "--pending-groups", type=int, default=100_000, help="pending groups for the pending read"
    )
    parser.add_argument(
        "--usage-rows",
        type=int,
        default=10_000_000,
        help="hourly rows of the usage dataset (cached between runs)",
    )
    parser.add_argument(
        "--usage-platform-repeats",
        type=int,
        default=3,
        help="requests for the platform's month, JSON and CSV each",
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds any one measurement may take")
    parser.add_argument(
        "--only",
        nargs="*",
        default=[],
        choices=PARTS,
        help="run only these parts",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = set(args.only) or set(PARTS)
    bench = Bench(args)
    report = Report()
    print(f"benchmark on {os.cpu_count()} cores, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", flush=True)
    started = time.monotonic()
    if wanted & {"ingest", "raw"}:
        baseline = bench_baseline(bench, report)
        bench_ingest_pulse_and_raw(bench, report, baseline, raw="raw" in wanted)
        if "ingest" in wanted:
            bench_ingest_pulses(bench, report, baseline)
    if "http" in wanted:
        bench_http(bench, report)
    if "persist" in wanted:
        bench_persist(bench, report)
    if "queries" in wanted:
        bench_queries(bench, report)
    if "rejected" in wanted:
        bench_rejected(bench, report)
    if "memory" in wanted:
        bench_redis_memory(bench, report)
    if "memory-soak" in wanted:
        bench_memory_soak(bench, report)
    if "pending" in wanted:
        bench_pending(bench, report)
    if "quorum" in wanted:
        bench_quorum(bench, report)
    if "usage" in wanted:
        bench_usage(bench, report)
    if "quorum-cluster" in wanted:
        bench_quorum_cluster(bench, report)
    if "redis-cluster" in wanted:
        bench_redis_cluster(bench, report)
    bench.reset()
    print()
    print(report.table())
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"bench-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(
        json.dumps(
            {
                "cores": os.cpu_count(),
                "args": vars(args),
                "seconds": time.monotonic() - started,
                "rows": [asdict(row) for row in report.rows],
            },
            indent=2,
        )
    )
    print(f"\nwritten to {path.relative_to(ROOT)} in {time.monotonic() - started:.0f} s")
    return 0 if all(row.met is not False for row in report.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
