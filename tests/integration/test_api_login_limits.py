"""Login is rate-limited per username and per client address, across app instances.

Two apps built from the same settings stand for two gunicorn workers (or two web
replicas): they share nothing but Redis, so a limit that holds across them holds
across processes; the Procfile's gunicorn, with curl as the client, shows the same.
Redis unreachable: login is refused with a 503 naming Redis, never let through
uncounted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace
from itertools import cycle

import pytest
from flask import Flask

from ingestor import create_app
from tests.integration.test_procfile import get, process_env, wait_for
from tests.support.api import PASSWORD
from tests.support.faults import proxied
from tests.support.procfile import ProcfileProcess, free_port


@pytest.fixture
def instances(settings, user) -> list[Flask]:
    limited = replace(
        settings, login_rate_limit_per_username="3/minute", login_rate_limit_per_address="5/minute"
    )
    return [create_app(limited), create_app(limited)]


def attempt(app: Flask, username: str, password: str = "wrong password", address: str = "10.0.0.1", **kwargs):
    return app.test_client().post(
        "/api/v1/login",
        json={"username": username, "password": password},
        environ_base={"REMOTE_ADDR": address},
        **kwargs,
    )


def assert_limited(response, what: str) -> None:
    assert response.status_code == 429, response.get_json()
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    error = response.get_json()["error"]
    assert error["code"] == "too_many_requests" and what in error["message"], error


def test_a_username_is_limited_across_instances_and_addresses(instances, user):
    apps = cycle(instances)
    for n in range(3):
        assert attempt(next(apps), user, address=f"10.0.0.{n}").status_code == 401

    # The fourth attempt, from yet another address, through either instance: refused,
    # even with the right password.
    assert_limited(attempt(next(apps), user, PASSWORD, address="10.0.0.9"), "for this username")
    assert_limited(attempt(next(apps), user, PASSWORD, address="10.0.0.8"), "for this username")
    # Other usernames are not held back by it.
    assert attempt(next(apps), "bob", address="10.0.0.7").status_code == 401


def test_an_address_is_limited_across_instances_and_usernames(instances):
    apps = cycle(instances)
    for n in range(5):
        assert attempt(next(apps), f"guess-{n}").status_code == 401

    assert_limited(attempt(next(apps), "guess-5"), "from this address")
    # Malformed bodies count against the address too (they name no username).
    bad = (
        next(apps)
        .test_client()
        .post(
            "/api/v1/login",
            data="{",
            content_type="application/json",
            environ_base={"REMOTE_ADDR": "10.0.0.1"},
        )
    )
    assert bad.status_code == 429
    # Another address is not.
    assert attempt(next(apps), "guess-6", address="10.0.0.2").status_code == 401


def test_forwarded_addresses_count_only_behind_trusted_proxies(settings, user):
    direct = create_app(replace(settings, login_rate_limit_per_address="2/minute"))
    proxied = create_app(replace(settings, login_rate_limit_per_address="2/minute", trusted_proxies=1))

    # Not behind a proxy: X-Forwarded-For is the client's own claim, and changes nothing.
    for n in range(2):
        forged = {"X-Forwarded-For": f"192.0.2.{n}"}
        assert attempt(direct, f"u{n}", address="10.1.0.1", headers=forged).status_code == 401
    assert (
        attempt(direct, "u2", address="10.1.0.1", headers={"X-Forwarded-For": "192.0.2.9"}).status_code == 429
    )

    # Behind one trusted proxy (the peer, 10.2.0.1): the address it forwards is the client's.
    for n in range(2):
        assert (
            attempt(
                proxied, f"v{n}", address="10.2.0.1", headers={"X-Forwarded-For": "198.51.100.1"}
            ).status_code
            == 401
        )
    assert (
        attempt(proxied, "v2", address="10.2.0.1", headers={"X-Forwarded-For": "198.51.100.1"}).status_code
        == 429
    )
    assert (
        attempt(proxied, "v3", address="10.2.0.1", headers={"X-Forwarded-For": "198.51.100.2"}).status_code
        == 401
    )


def test_login_with_redis_unreachable_is_refused_503_naming_redis(settings, user):
    app = create_app(replace(settings, redis_url="redis://127.0.0.1:1/0"))

    response = attempt(app, user, PASSWORD)

    assert response.status_code == 503 and response.headers["Retry-After"].isdigit()
    error = response.get_json()["error"]
    assert error["details"] == {"service": "redis"} and "Redis" in error["message"]
    assert "access_token" not in response.get_data(as_text=True)


def test_limit_settings_are_validated(settings):
    from ingestor.settings import SettingsError

    with pytest.raises(SettingsError, match="LOGIN_RATE_LIMIT_PER_USERNAME"):
        replace(settings, login_rate_limit_per_username="ten a minute").validated()


def curl(*args: str) -> tuple[int, dict[str, str], dict]:
    """`curl` (someone else's HTTP client) -> status, headers (lower-case names), JSON body."""
    out = subprocess.run(
        ["curl", "-s", "-i", "--max-time", "30", *args], capture_output=True, check=True, text=True
    )
    head, _, body = out.stdout.replace("\r\n", "\n").partition("\n\n")
    status_line, *header_lines = head.splitlines()
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, json.loads(body)


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_gunicorn_workers_share_the_limit_and_answer_outages_503(settings, user):
    """The Procfile's web line, two workers, curl as the client: 429 and 503 as documented."""
    with proxied(settings) as proxies:
        port = free_port()
        env = process_env(
            proxies.settings,
            PORT=str(port),
            WEB_CONCURRENCY="2",
            GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{port}",
            LOGIN_RATE_LIMIT_PER_USERNAME="4/minute",
        )
        web = ProcfileProcess("web", env).start()
        base = f"http://127.0.0.1:{port}"
        login = ["-X", "POST", f"{base}/api/v1/login", "-H", "Content-Type: application/json", "-d"]
        try:
            wait_for(lambda: get(f"{base}/health")[0] == 200, 60, web, "answer on /health")
            status, _, body = curl(*login, json.dumps({"username": user, "password": PASSWORD}))
            assert status == 200, body
            token = body["access_token"]
            # One connection per attempt: the two workers take them as they come.
            for _ in range(3):
                assert curl(*login, json.dumps({"username": user, "password": "wrong"}))[0] == 401
            status, headers, body = curl(*login, json.dumps({"username": user, "password": PASSWORD}))
            assert status == 429 and headers["retry-after"].isdigit(), (status, headers, body)
            assert "for this username" in body["error"]["message"]

            with proxies.database.outage():
                status, headers, body = curl(f"{base}/api/v1/pulses", "-H", f"Authorization: Bearer {token}")
            assert status == 503 and headers["retry-after"].isdigit(), (status, body)
            assert body["error"]["details"] == {"service": "postgresql"}
            assert web.terminate(timeout=30), web.tail()
        finally:
            web.kill()
