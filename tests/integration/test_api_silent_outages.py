"""A dependency that stops answering (packets dropped, no reset) is a 503 in bounded time.

The outage tests cut connections with a reset, which every client notices at once. A
firewall dropping packets or a dead host sends nothing at all: without timeouts of its
own a client waits for the operating system's TCP timeout, minutes, and so does the
HTTP request. Here PostgreSQL or Redis is a black hole (tests/support/proxy.py) under
an app built with 1 s timeouts, and the routes that need it must answer 503 naming it
within a few seconds. Each request runs in a thread joined with the bound, so a
regression fails in that bound instead of hanging the run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace

import pytest
from flask import Flask

from ingestor import create_app
from ingestor.settings import Settings
from tests.integration.test_api_outages import POSTGRESQL, REDIS, assert_outage_answer
from tests.support.api import PASSWORD
from tests.support.proxy import BlackHole

TIMEOUT_SECONDS = 1
# Above a 1 s timeout (measured: each 503 comes in about 1.0 s) and below redis-py's own
# default read timeout, 5 s, so the test also fails if the settings are not applied.
BOUND_SECONDS = 4.5


def answered_within(bound: float, request: Callable[[], object]) -> tuple[object, float]:
    """The response of `request()` and the seconds it took; fails if not answered in `bound`."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["response"] = request()
        except BaseException as exc:  # re-raised in the test's thread
            outcome["error"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(bound)
    elapsed = time.monotonic() - started
    assert not thread.is_alive(), f"no answer within {bound} s: the request hangs"
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["response"], elapsed


def app_with_short_timeouts(settings: Settings, **urls: str) -> Flask:
    return create_app(
        replace(
            settings,
            database_connect_timeout_seconds=TIMEOUT_SECONDS,
            redis_connect_timeout_seconds=TIMEOUT_SECONDS,
            redis_socket_timeout_seconds=TIMEOUT_SECONDS,
            **urls,
        )
    )


@pytest.fixture
def black_hole():
    with BlackHole() as hole:
        yield hole


def test_a_silent_postgresql_is_a_503_in_bounded_time(settings, auth, black_hole):
    app = app_with_short_timeouts(settings, database_url=black_hole.url(settings.database_url))
    client = app.test_client()

    response, elapsed = answered_within(
        BOUND_SECONDS, lambda: client.get("/api/v1/pulses?tenant=acme", headers=auth)
    )

    assert_outage_answer(response, POSTGRESQL, "GET /api/v1/pulses")
    assert elapsed < BOUND_SECONDS


def test_a_silent_redis_is_a_503_on_login_in_bounded_time(settings, user, black_hole):
    app = app_with_short_timeouts(settings, redis_url=black_hole.url(settings.redis_url))
    client = app.test_client()

    response, elapsed = answered_within(
        BOUND_SECONDS,
        lambda: client.post("/api/v1/login", json={"username": user, "password": PASSWORD}),
    )

    assert_outage_answer(response, REDIS, "POST /api/v1/login")
    assert elapsed < BOUND_SECONDS
