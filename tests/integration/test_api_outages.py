"""Every route answers a dependency outage honestly: a 503 with Retry-After naming the service.

Each of PostgreSQL, Redis and RabbitMQ is cut in turn (through a proxy the test owns,
tests/support/proxy.py) under an app whose every connection goes through the proxies,
and every route of the app's URL map is called with a request that succeeds when all
is up. A route that needs the cut service must answer 503, `Retry-After` and the
service's name; any other route must answer as usual, never a 5xx. A route added later
is called too (with a request built from its rule) and held to "503 naming the cut
service, or not a 5xx". The same for a database that does not exist.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from ingestor import create_app
from ingestor.settings import Settings
from tests.integration.conftest import STATUS_RECORDER
from tests.support.faults import Proxies, proxied

POSTGRESQL, REDIS, RABBITMQ = "postgresql", "redis", "rabbitmq"
SERVICE_NAMES = {POSTGRESQL: "PostgreSQL", REDIS: "Redis", RABBITMQ: "RabbitMQ"}
PULSE = {"id": "outage-1", "tenant": "acme", "product_sku": "vm", "use_unity": "hour", "used_amount": "1.5"}


@dataclass
class Call:
    """One request to one route, and the services it cannot answer without."""

    method: str
    url: str
    needs: frozenset[str] = frozenset()
    body: object = None
    authenticated: bool = True
    # Statuses that mean "answered normally" when every service is up.
    ok: tuple[int, ...] = (200, 202)
    extra_headers: dict[str, str] = field(default_factory=dict)
    # False for a route this test does not know: held to "503 naming the service, or not a 5xx".
    known: bool = True


# What each endpoint needs, for a token this process has checked recently (every
# token-protected route looks its user up in PostgreSQL, but takes a user seen active
# within USER_LOOKUP_GRACE_SECONDS while PostgreSQL is down: the pulse intake stays
# open; see test_a_token_not_checked_within_the_grace_needs_postgresql). GET
# /api/v1/pulses only caches its row count in Redis: it answers without it. /metrics
# reads its Redis gauges best-effort.
KNOWN: dict[tuple[str, str], Call] = {
    ("auth.login", "POST"): Call(
        "POST", "/api/v1/login", frozenset({POSTGRESQL, REDIS}), authenticated=False
    ),
    ("pulses.Pulses", "GET"): Call("GET", "/api/v1/pulses?tenant=acme", frozenset({POSTGRESQL})),
    ("pulses.Pulses", "POST"): Call("POST", "/api/v1/pulses", frozenset({RABBITMQ}), [PULSE]),
    ("pulses.get_one", "GET"): Call("GET", "/api/v1/pulses/{usage_id}", frozenset({POSTGRESQL})),
    ("rejected_pulses.list_rejected_pulses", "GET"): Call(
        "GET", "/api/v1/rejected-pulses?tenant=acme&reason=negative", frozenset({POSTGRESQL})
    ),
    # Pending usage is read from Redis before the rows from PostgreSQL.
    ("usage.get_usage_report", "GET"): Call(
        "GET",
        "/api/v1/usage?from=2026-11-01T00:00Z&to=2026-11-02T00:00Z&window_size=hour&tenant=acme",
        frozenset({POSTGRESQL, REDIS}),
    ),
    ("pulses.start_populate", "POST"): Call(
        "POST",
        "/api/v1/pulses/populate",
        frozenset({REDIS, RABBITMQ}),
        {"total_messages": 10, "workers_number": 1, "buffer_size": 10},
    ),
    ("pulses.populate_progress", "GET"): Call("GET", "/api/v1/pulses/populate/{job_id}", frozenset({REDIS})),
    ("health.ready", "GET"): Call(
        "GET", "/ready", frozenset({POSTGRESQL, REDIS, RABBITMQ}), authenticated=False
    ),
    ("health.health", "GET"): Call("GET", "/health", authenticated=False),
    ("metrics.metrics", "GET"): Call("GET", "/metrics", authenticated=False),
    ("api-docs.openapi_json", "GET"): Call("GET", "/api/v1/openapi.json", authenticated=False),
}


def every_call(app: Flask, values: dict[str, str]) -> list[tuple[tuple[str, str], Call]]:
    """A call for every (endpoint, method) of the URL map: the known one, else one built from the rule."""
    calls = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            key = (rule.endpoint, method)
            if key in KNOWN:
                call = replace(KNOWN[key], url=KNOWN[key].url.format(**values))
            else:
                url = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", lambda m: values.get(m.group(1), "1"), rule.rule)
                call = Call(
                    method,
                    url,
                    body={} if method in ("POST", "PUT", "PATCH") else None,
                    ok=tuple(range(200, 500)),
                    known=False,
                )
            calls.append((key, call))
    return calls


def send(client: FlaskClient, call: Call, auth: dict[str, str], login: dict[str, str]):
    headers = {**(auth if call.authenticated else {}), **call.extra_headers}
    body = login if call.url == "/api/v1/login" else call.body
    return client.open(call.url, method=call.method, json=body, headers=headers)


def assert_outage_answer(response, service: str, where: object) -> None:
    assert response.status_code == 503, (where, response.status_code, response.get_data(as_text=True)[:300])
    assert response.headers.get("Retry-After", "").isdigit(), (where, dict(response.headers))
    error = response.get_json()["error"]
    assert error["code"] == "service_unavailable", where
    assert SERVICE_NAMES[service] in error["message"], (where, error)
    named = error["details"].get("service") or error["details"].get("services")
    assert service == named or service in named, (where, error)


@pytest.fixture(scope="module")
def through_proxies(settings: Settings, _services_ready: None) -> Iterator[tuple[Proxies, Flask]]:
    with proxied(settings) as proxies:
        app = create_app(proxies.settings)
        # Every status answered here must be in the OpenAPI document too (test_openapi_document).
        STATUS_RECORDER.connect(app)
        yield proxies, app


@pytest.fixture
def values(app: Flask, client, auth, database) -> dict[str, str]:
    """Path values naming things that exist: a persisted sum, a populate job."""
    with database.engine.begin() as connection:
        usage_id = connection.execute(
            text(
                "INSERT INTO pulse_usage (tenant, product_sku, use_unity, window_start, used_amount, pulse_count)"
                " VALUES ('acme', 'vm', 'hour', '2026-11-01T00:00Z', 1.5, 1) RETURNING id"
            )
        ).scalar_one()
    job = client.post(
        "/api/v1/pulses/populate",
        json={"total_messages": 1, "workers_number": 1, "buffer_size": 1},
        headers=auth,
    )
    assert job.status_code == 202, job.get_json()
    return {"usage_id": str(usage_id), "job_id": job.get_json()["job_id"]}


@pytest.fixture
def login(user) -> dict[str, str]:
    from tests.support.api import PASSWORD

    return {"username": user, "password": PASSWORD}


def test_the_calls_cover_the_url_map_and_succeed_with_every_service_up(through_proxies, auth, login, values):
    _, app = through_proxies
    calls = every_call(app, values)
    assert {key for key, _ in calls} >= set(KNOWN), "a known route disappeared from the URL map"
    client = app.test_client()
    for key, call in calls:
        response = send(client, call, auth, login)
        assert response.status_code in call.ok, (
            key,
            response.status_code,
            response.get_data(as_text=True)[:300],
        )


@pytest.mark.parametrize("service", [POSTGRESQL, REDIS, RABBITMQ])
def test_every_route_answers_an_outage_with_503_naming_the_service(
    through_proxies, auth, login, values, service
):
    proxies, app = through_proxies
    proxy = {POSTGRESQL: proxies.database, REDIS: proxies.redis, RABBITMQ: proxies.broker}[service]
    client = app.test_client()
    calls = every_call(app, values)
    for key, call in calls:  # all up: every call answers (and the token is checked)
        assert send(client, call, auth, login).status_code in call.ok, key
    with proxy.outage():
        for key, call in calls:
            response = send(client, call, auth, login)
            if service in call.needs:
                assert_outage_answer(response, service, key)
            elif response.status_code == 503 and not call.known:
                # A route this test does not know yet: at least it names what it missed.
                assert_outage_answer(response, service, key)
            else:
                # Does not need it: answers as usual.
                assert response.status_code in call.ok, (key, response.status_code, response.get_json())
    # Back as soon as the service is: pooled connections broken by the cut are replaced.
    for key, call in calls:
        response = send(client, call, auth, login)
        assert response.status_code in call.ok, (
            key,
            "after the outage",
            response.status_code,
            response.get_json(),
        )


def test_a_database_that_does_not_exist_is_a_503_naming_postgresql(settings, auth, login, values):
    missing = replace(
        settings, database_url=settings.database_url.rsplit("/", 1)[0] + "/pulse_ingestor_no_such_db"
    )
    app = create_app(missing)
    STATUS_RECORDER.connect(app)
    client = app.test_client()
    for key, call in every_call(app, values):
        response = send(client, call, auth, login)
        # No token can be checked by this process, ever: every protected route needs it.
        if POSTGRESQL in call.needs or call.authenticated:
            assert_outage_answer(response, POSTGRESQL, key)
        else:
            assert response.status_code < 500, (key, response.get_json())


@pytest.mark.parametrize("grace", [300, 1])
def test_a_token_not_checked_within_the_grace_needs_postgresql(settings, auth, login, values, grace):
    """Every protected route: 503 naming PostgreSQL for a token this process has not
    checked (grace 300: a fresh process) or not within the grace (1 s, waited out)."""
    with proxied(settings, user_lookup_grace_seconds=grace) as proxies:
        app = create_app(proxies.settings)
        STATUS_RECORDER.connect(app)
        client = app.test_client()
        protected = [(key, call) for key, call in every_call(app, values) if call.authenticated]
        assert len(protected) >= 5, protected
        if grace == 1:
            assert client.get("/api/v1/pulses", headers=auth).status_code == 200
            time.sleep(1.5)
        with proxies.database.outage():
            for key, call in protected:
                assert_outage_answer(send(client, call, auth, login), POSTGRESQL, key)


def test_a_user_found_disabled_is_not_taken_as_active_in_a_later_outage(settings, app, auth):
    with proxied(settings) as proxies:
        proxied_app = create_app(proxies.settings)
        client = proxied_app.test_client()
        assert client.post("/api/v1/pulses", json=[PULSE], headers=auth).status_code == 202
        assert app.test_cli_runner().invoke(args=["users", "disable", "alice"]).exit_code == 0
        assert client.post("/api/v1/pulses", json=[PULSE], headers=auth).status_code == 401

        with proxies.database.outage():
            response = client.post("/api/v1/pulses", json=[PULSE], headers=auth)

        assert_outage_answer(response, POSTGRESQL, "POST /api/v1/pulses")


def test_ready_names_each_service_and_its_state_but_no_connection_detail(through_proxies):
    proxies, app = through_proxies
    client = app.test_client()
    up = client.get("/ready")
    assert up.status_code == 200
    assert up.get_json() == {"status": "ready", "services": {POSTGRESQL: "ok", REDIS: "ok", RABBITMQ: "ok"}}

    with proxies.redis.outage(), proxies.broker.outage():
        down = client.get("/ready")

    body = down.get_json()
    assert down.status_code == 503 and down.headers["Retry-After"].isdigit()
    assert body["status"] == "unavailable"
    assert body["services"] == {POSTGRESQL: "ok", REDIS: "unavailable", RABBITMQ: "unavailable"}
    assert body["error"]["details"] == {"services": [REDIS, RABBITMQ]}
    assert "Redis" in body["error"]["message"] and "RabbitMQ" in body["error"]["message"]
    # Nothing of the driver's text: no host, no port, no exception name.
    raw = down.get_data(as_text=True)
    for leak in ("127.0.0.1", str(proxies.redis.port), str(proxies.broker.port), "Error", "Connection"):
        assert leak not in raw, (leak, raw)
