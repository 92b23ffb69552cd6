"""GET /api/v1/pulses and /api/v1/pulses/<id>: pages, cursors, filters, bad parameters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text

BASE = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def usage_rows(database, clean_state) -> list[dict]:
    """57 sums over 3 tenants and 19 hours, inserted as the persist would have."""
    rows = []
    for n in range(57):
        rows.append(
            {
                "tenant": ["acme", "globex:eu", "initech ☕"][n % 3],
                "product_sku": "vm.small" if n % 2 else "storage",
                "use_unity": "vCPU-hour" if n % 2 else "GB",
                "window_start": BASE + timedelta(hours=n // 3),
                "used_amount": Decimal(f"{n}.{n:06d}") + Decimal("12345678"),
                "pulse_count": n + 1,
            }
        )
    with database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO pulse_usage (tenant, product_sku, use_unity, window_start, used_amount, pulse_count)"
                " VALUES (:tenant, :product_sku, :use_unity, :window_start, :used_amount, :pulse_count)"
            ),
            rows,
        )
    return rows


def test_first_page_is_newest_hour_first_with_exact_amounts(client, auth, usage_rows):
    response = client.get("/api/v1/pulses", headers=auth)

    assert response.status_code == 200
    body = response.get_json()
    assert (body["page"], body["limit"], body["total"]) == (1, 10, 57)
    assert len(body["items"]) == 10
    first = body["items"][0]
    assert first["window_start"].startswith((BASE + timedelta(hours=18)).isoformat()[:19])
    assert first["used_amount"] == "12345734.000056"  # 12345678 + 56.000056, as a string
    assert set(first) == {
        "id",
        "tenant",
        "product_sku",
        "use_unity",
        "window_start",
        "used_amount",
        "pulse_count",
        "updated_at",
    }
    keys = [(i["window_start"], i["id"]) for i in body["items"]]
    assert keys == sorted(keys, reverse=True)


def test_pages_and_cursor_walk_each_row_exactly_once(client, auth, usage_rows):
    by_page, page = [], 1
    while items := client.get(f"/api/v1/pulses?page={page}&limit=7", headers=auth).get_json()["items"]:
        by_page += [i["id"] for i in items]
        page += 1

    by_cursor, url = [], "/api/v1/pulses?limit=7"
    while True:
        body = client.get(url, headers=auth).get_json()
        by_cursor += [i["id"] for i in body["items"]]
        if body["next_cursor"] is None:
            break
        url = f"/api/v1/pulses?limit=7&cursor={body['next_cursor']}"
        assert body["page"] in (1, None)

    assert len(by_cursor) == len(set(by_cursor)) == 57
    assert by_cursor == by_page


def test_filters_combine(client, auth, usage_rows):
    frm, to = BASE + timedelta(hours=3), BASE + timedelta(hours=9)
    response = client.get(
        "/api/v1/pulses",
        query_string={
            "tenant": "globex:eu",
            "product_sku": "vm.small",
            "from": frm.isoformat(),
            "to": to.isoformat(),
            "limit": 100,
        },
        headers=auth,
    )

    expected = [
        r
        for r in usage_rows
        if r["tenant"] == "globex:eu" and r["product_sku"] == "vm.small" and frm <= r["window_start"] < to
    ]
    body = response.get_json()
    assert body["total"] == len(expected) > 0
    assert sorted(Decimal(i["used_amount"]) for i in body["items"]) == sorted(
        r["used_amount"] for r in expected
    )


def test_unicode_tenant_filter(client, auth, usage_rows):
    body = client.get("/api/v1/pulses", query_string={"tenant": "initech ☕"}, headers=auth).get_json()
    assert body["total"] == 19


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("page=0", "page"),
        ("page=-1", "page"),
        ("page=abc", "page"),
        ("page=1.5", "page"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("from=yesterday", "from"),
        ("to=2026-13-01", "to"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=WyJ4IiwgMV0", "cursor"),  # base64 of ["x", 1]
        ("tenant=" + "a" * 129, "tenant"),
        ("tenant=%00", "tenant"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(client, auth, usage_rows, query, parameter):
    response = client.get(f"/api/v1/pulses?{query}", headers=auth)

    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "bad_request"
    assert parameter in str(error.get("details")), error


def test_a_repeated_filter_means_either_value(client, auth, usage_rows):
    both = client.get(
        "/api/v1/pulses?tenant=acme&tenant=initech+%E2%98%95&limit=100", headers=auth
    ).get_json()
    one_sku = client.get(
        "/api/v1/pulses?tenant=acme&tenant=globex:eu&product_sku=storage&product_sku=storage", headers=auth
    ).get_json()

    assert both["total"] == 38 and {i["tenant"] for i in both["items"]} == {"acme", "initech ☕"}
    expected = [
        r for r in usage_rows if r["tenant"] in ("acme", "globex:eu") and r["product_sku"] == "storage"
    ]
    assert one_sku["total"] == len(expected) > 0


def test_injection_looking_filters_are_just_strings(client, auth, usage_rows, database):
    response = client.get("/api/v1/pulses", query_string={"tenant": "acme' OR '1'='1"}, headers=auth)

    assert response.status_code == 200
    assert response.get_json()["total"] == 0


def test_one_sum_by_id(client, auth, usage_rows, database):
    with database.engine.connect() as connection:
        row_id = connection.execute(text("SELECT id FROM pulse_usage WHERE pulse_count = 3")).scalar()

    response = client.get(f"/api/v1/pulses/{row_id}", headers=auth)

    assert response.status_code == 200
    assert response.get_json()["used_amount"] == "12345680.000002"
    assert response.get_json()["tenant"] == "initech ☕"


@pytest.mark.parametrize("path", ["999999", "abc", "-1", "1.5", "99999999999999999999999", "%00"])
def test_absent_or_invalid_ids_are_404_json(client, auth, usage_rows, path):
    response = client.get(f"/api/v1/pulses/{path}", headers=auth)

    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def _count_one(app, tenant: str) -> None:
    from ingestor.pulses import keys
    from ingestor.pulses.aggregation import pulse_with_id

    dedupe_key = keys.dedupe_key_for_id(tenant, "1")
    window = keys.window_key(keys.tag_of_dedupe_key(dedupe_key), keys.hour_of(datetime.now(UTC)), tenant)
    app.extensions["pulses"].counter.count(
        [pulse_with_id(tenant, "1", window, keys.group_field(tenant, "vm", "h"), 1)]
    )


def test_cached_totals_follow_every_persist(app, client, auth, clean_state, monkeypatch):
    persister = app.extensions["pulses"].persister
    _count_one(app, "first")
    persister.persist_pending()
    assert client.get("/api/v1/pulses", headers=auth).get_json()["total"] == 1

    write = persister._write

    def read_just_before_the_commit(*args, **kwargs):
        # A reader caches the total while the flush is under way, before its commit.
        assert client.get("/api/v1/pulses", headers=auth).get_json()["total"] == 1
        return write(*args, **kwargs)

    monkeypatch.setattr(persister, "_write", read_just_before_the_commit)
    _count_one(app, "second")
    persister.persist_pending()

    assert client.get("/api/v1/pulses", headers=auth).get_json()["total"] == 2


def test_queries_work_without_redis(usage_rows, auth):
    from ingestor import create_app
    from tests.support.services import settings_for_tests

    app = create_app(settings_for_tests(redis_url="redis://127.0.0.1:1/0"))
    response = app.test_client().get("/api/v1/pulses?tenant=acme", headers=auth)

    assert response.status_code == 200
    assert response.get_json()["total"] == 19
