"""`make bench BENCH_ARGS="--only usage"`: GET /api/v1/usage over millions of hourly rows.

The dataset: `--usage-rows` hourly rows of pulse_usage (10 million by default) over 90
days (2026-09-02 to 2026-12-01), 10,000 tenants, skewed as usage is: 100 large
tenants (tenant-0 .. tenant-99) hold a Zipf share of about 45% of the rows (tenant-0
about 400 groups every hour, tenant-99 four), the 9,900 others one row every few
hours, cycling through 3 SKUs. Rows go in hour by hour, as the flush writes them,
so one tenant's rows are spread over the whole table, as in production.

It lives in a database of its own (`BENCH_USAGE_DATABASE_URL`, default the bench
database's name + `_usage`), which the other parts never recreate: loading 10
million rows takes minutes, so a run reuses the rows when the table's comment names
the same dataset, and only migrates the schema (`alembic upgrade head` on a
populated table, as a deploy does).

Every figure is through the HTTP API under gunicorn with a real client
(http.client, keep-alive), as a logged-in user.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from http.client import HTTPConnection
from urllib.parse import urlencode

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from bench.pulses import count_pending_groups
from bench.report import Report, Row, latency_row, percentile
from bench.serving import create_bench_user, gunicorn_api
from ingestor.database import Database, create_database_if_missing, upgrade_schema

START = datetime(2026, 9, 2, tzinfo=UTC)
DAYS = 90
TENANTS = 10_000
LARGE_TENANTS = 100
# The share of the rows the large tenants hold.
LARGE_SHARE = 0.45
# Harmonic number H(100): the large tenants' groups are C / (rank + 1), summing to ~C * H.
HARMONIC_100 = 5.187
SKUS_OF_SMALL_TENANTS = 3
# The month every query reads (the dataset's last whole month) and its pending hours.
MONTH = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
USAGE_URL = "/api/v1/usage"


@dataclass(frozen=True)
class Dataset:
    """The parameters that make the rows; the table's comment records them."""

    rows: int
    tenants: int = TENANTS
    days: int = DAYS
    start: str = START.isoformat()
    version: int = 1

    @property
    def hours(self) -> int:
        return self.days * 24

    @property
    def zipf_numerator(self) -> int:
        """tenant-r (r < 100) has floor(C / (r + 1)) groups every hour."""
        return int(self.rows * LARGE_SHARE / self.hours / HARMONIC_100)

    @property
    def marker(self) -> str:
        return "bench usage dataset " + json.dumps(asdict(self), sort_keys=True)


def usage_database_url(bench_database_url: str) -> str:
    """BENCH_USAGE_DATABASE_URL, else the bench database's URL with `_usage` appended to its name."""
    if explicit := os.environ.get("BENCH_USAGE_DATABASE_URL"):
        return explicit
    url = make_url(bench_database_url)
    return url.set(database=f"{url.database}_usage").render_as_string(hide_password=False)


def ensure_dataset(engine: Engine, dataset: Dataset) -> str:
    """The rows of `dataset` in pulse_usage, loaded only if the table holds another; what was done."""
    with engine.connect() as connection:
        comment = connection.execute(
            text("SELECT obj_description('pulse_usage'::regclass, 'pg_class')")
        ).scalar()
    if comment == dataset.marker:
        return "reused"
    started = time.monotonic()
    with engine.begin() as connection:
        connection.execute(text("TRUNCATE pulse_usage RESTART IDENTITY"))
        connection.execute(text("COMMENT ON TABLE pulse_usage IS NULL"))
        _load(connection, dataset)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        # The statistics, and the visibility map index-only scans need.
        connection.execute(text("VACUUM ANALYZE pulse_usage"))
        connection.execute(text(f"COMMENT ON TABLE pulse_usage IS '{dataset.marker}'"))
    return f"loaded in {time.monotonic() - started:.0f} s"


def _load(connection, dataset: Dataset) -> None:
    """INSERT ... SELECT generate_series, hour by hour: the large tenants, then the small ones."""
    start = {"start": START, "hours": dataset.hours}
    connection.execute(
        text(
            "CREATE TEMP TABLE large_groups ON COMMIT DROP AS SELECT t, s FROM generate_series(0, :large - 1) t,"
            " generate_series(0, floor(CAST(:c AS numeric) / (t + 1))::int - 1) s"
        ),
        {"large": LARGE_TENANTS, "c": dataset.zipf_numerator},
    )
    large_per_hour = connection.execute(text("SELECT count(*) FROM large_groups")).scalar_one()
    small_per_hour = (dataset.rows - large_per_hour * dataset.hours) // dataset.hours
    small_tenants = dataset.tenants - LARGE_TENANTS
    # One row per small tenant an hour at most: the unique (tenant, sku, unit, hour) holds.
    assert 0 <= small_per_hour <= small_tenants, (large_per_hour, small_per_hour)
    units = "(ARRAY['GB', 'vCPU-hour', 'requests'])"
    connection.execute(
        text(
            "INSERT INTO pulse_usage (tenant, product_sku, use_unity, window_start, used_amount, pulse_count)"
            f" SELECT 'tenant-' || t, 'sku-' || s, {units}[1 + s % 3], :start + make_interval(hours => h),"
            " ((h * 7919 + t * 104729 + s * 31) % 100000000)::numeric / 1000000, 1 + (h + s) % 7"
            " FROM generate_series(0, :hours - 1) h CROSS JOIN LATERAL (SELECT t, s FROM large_groups) g"
        ),
        start,
    )
    connection.execute(
        text(
            "INSERT INTO pulse_usage (tenant, product_sku, use_unity, window_start, used_amount, pulse_count)"
            " SELECT 'tenant-' || (:large + n % :small), 'sku-' || (n / :small % :skus),"
            f" {units}[1 + n / :small % :skus], :start + make_interval(hours => n / :per_hour),"
            " ((n::bigint * 7919) % 100000000)::numeric / 1000000, 1 + n % 7"
            " FROM generate_series(0, :hours * :per_hour - 1) n"
        ),
        {
            **start,
            "large": LARGE_TENANTS,
            "small": small_tenants,
            "skus": SKUS_OF_SMALL_TENANTS,
            "per_hour": small_per_hour,
        },
    )


class UsageClient:
    """GET /api/v1/usage on a keep-alive connection, timed."""

    def __init__(self, port: int, token: str) -> None:
        self.connection = HTTPConnection("127.0.0.1", port, timeout=600)
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, **parameters: object) -> tuple[float, int]:
        """(seconds, rows answered) for the usage of MONTH with `parameters`."""
        query = {"from": MONTH[0].isoformat(), "to": MONTH[1].isoformat(), **parameters}
        started = time.perf_counter()
        self.connection.request("GET", f"{USAGE_URL}?{urlencode(query, doseq=True)}", headers=self.headers)
        response = self.connection.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
        assert response.status == 200, body[:500]
        if parameters.get("format") == "csv":
            return elapsed, body.count(b"\n") - 1
        return elapsed, len(json.loads(body)["rows"])


def bench_usage(bench, report: Report) -> None:
    """One tenant's month by day and per SKU, the platform's month by tenant (JSON, CSV), and
    what include_pending adds with 100,000 groups pending in Redis."""
    args = bench.args
    dataset = Dataset(args.usage_rows)
    url = usage_database_url(bench.settings.database_url)
    create_database_if_missing(url)
    upgrade_schema(url)
    engine = create_engine(url)
    try:
        done = ensure_dataset(engine, dataset)
    finally:
        engine.dispose()
    # The machine's load goes with the figures: a shared 2-core machine moves them by several times.
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"  usage dataset: {dataset.rows:,} rows in {make_url(url).database}, {done}; load {load}", flush=True
    )
    settings = replace(bench.settings, database_url=url)
    database = Database(url)
    create_bench_user(database)
    database.engine.dispose()
    bench.reset()
    rng = random.Random(13)
    repeats = args.query_repeats
    size = f"{dataset.rows:,} rows"
    with gunicorn_api(settings) as (port, token):
        client = UsageClient(port, token)

        def tenants(n: int) -> list[str]:
            return [f"tenant-{rng.randrange(dataset.tenants)}" for _ in range(n)]

        def one_tenant(tenant: str, **parameters: object) -> float:
            return client.get(tenant=tenant, include_pending="false", **parameters)[0]

        by_day = [one_tenant(tenant, window_size="day") for tenant in tenants(repeats)]
        report.add(
            latency_row(
                f"GET {USAGE_URL} one tenant's month by day ({size})",
                by_day,
                limit_ms=30,
                what="requests, a random tenant of 10,000 each",
            )
        )
        per_sku = [one_tenant(tenant, group_by=["product_sku", "use_unity"]) for tenant in tenants(repeats)]
        report.add(
            latency_row(
                f"GET {USAGE_URL} one tenant's month per SKU ({size})",
                per_sku,
                limit_ms=30,
                what="requests, a random tenant of 10,000 each",
            )
        )
        largest = [one_tenant("tenant-0", window_size="day") for _ in range(max(3, repeats // 20))]
        rows_of_largest = dataset.zipf_numerator * 24 * 30
        report.add(
            latency_row(
                f"GET {USAGE_URL} the largest tenant's month by day",
                largest,
                target=False,
                what=f"requests, tenant-0: {rows_of_largest:,} rows in the month",
            )
        )
        for answer in ("json", "csv"):
            samples, rows = [], 0
            for _ in range(args.usage_platform_repeats):
                elapsed, rows = client.get(group_by="tenant", include_pending="false", format=answer)
                samples.append(elapsed)
            worst = max(samples)
            report.add(
                Row(
                    f"GET {USAGE_URL} the platform's month by tenant, {answer.upper()}",
                    worst * 1000,
                    "ms max",
                    "< 1 s",
                    worst < 1,
                    f"p50 {percentile(samples, 0.5) * 1000:,.0f} ms, {len(samples)} requests, {rows:,} rows out",
                )
            )
        _bench_include_pending(bench, report, client, tenants(repeats), size)


def _bench_include_pending(bench, report: Report, client: UsageClient, tenants: list[str], size: str) -> None:
    """One tenant's month by day with and without include_pending, interleaved request by request
    (each tenant's rows read once first), 100,000 groups pending in the month's last two hours
    (counted by the ingest script)."""
    services = bench.app.extensions["pulses"]
    hours = [MONTH[1] - timedelta(hours=2), MONTH[1] - timedelta(hours=1)]
    count_pending_groups(services, hours, bench.args.pending_groups)
    with_pending: list[float] = []
    without: list[float] = []
    for n, tenant in enumerate(tenants):
        # The tenant's index pages read once, untimed: else whichever request comes first
        # pays the cold reads and the difference measures the disk, not the pending read.
        client.get(tenant=tenant, window_size="day", include_pending="false")
        # tenant-<n> for n < 10,000 all have pending groups: the read finds some every time.
        # The order alternates: neither side is always the one after a quiet moment.
        pair = [(with_pending, "true"), (without, "false")]
        for samples, pending in pair if n % 2 else reversed(pair):
            samples.append(client.get(tenant=tenant, window_size="day", include_pending=pending)[0])
    bench.reset()
    p99_with, p99_without = percentile(with_pending, 0.99) * 1000, percentile(without, 0.99) * 1000
    added = p99_with - p99_without
    report.add(
        Row(
            f"GET {USAGE_URL} one tenant's month by day: include_pending's added cost",
            added,
            "ms p99",
            "< 20 ms",
            added < 20,
            f"p99 {p99_with:.1f} ms with, {p99_without:.1f} ms without ({size}, "
            f"{bench.args.pending_groups:,} pending groups); p50 "
            f"{(percentile(with_pending, 0.5) - percentile(without, 0.5)) * 1000:.1f} ms added",
        )
    )
