"""Fixtures of the API tests: a user, a token, a client recording every status code, gunicorn."""

from __future__ import annotations

import http.client
from collections.abc import Iterator

import pytest
from flask import Flask
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.integration.test_procfile import process_env, wait_for
from tests.support.api import PASSWORD, StatusRecorder
from tests.support.procfile import ProcfileProcess, free_port
from tests.support.redis_cluster import PrivateRedisCluster

STATUS_RECORDER = StatusRecorder()


@pytest.fixture(scope="session")
def recorded_app(app: Flask) -> Flask:
    STATUS_RECORDER.connect(app)
    return app


@pytest.fixture
def client(recorded_app: Flask):
    return recorded_app.test_client()


@pytest.fixture
def user(app: Flask, database, clean_state) -> str:
    with database.engine.begin() as connection:
        connection.execute(text("DELETE FROM api_user"))
    result = app.test_cli_runner().invoke(args=["users", "create", "alice", "--password", PASSWORD])
    assert result.exit_code == 0, result.output
    return "alice"


@pytest.fixture
def token(client, user) -> str:
    response = client.post("/api/v1/login", json={"username": user, "password": PASSWORD})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["access_token"]


@pytest.fixture
def auth(token) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def fresh_database_url(settings) -> Iterator[str]:
    """The URL of a database that does not exist yet (the test database's name + `_cli`)."""
    url = make_url(settings.database_url)
    fresh = url.set(database=f"{url.database}_cli")
    maintenance = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    drop = text(f'DROP DATABASE IF EXISTS "{fresh.database}" WITH (FORCE)')
    with maintenance.connect() as connection:
        connection.execute(drop)
    yield fresh.render_as_string(hide_password=False)
    with maintenance.connect() as connection:
        connection.execute(drop)
    maintenance.dispose()


@pytest.fixture(scope="module")
def gunicorn(settings, _services_ready) -> Iterator[int]:
    """The Procfile's web process (gunicorn, 2 workers) on the test services; its port."""
    port = free_port()
    env = process_env(
        settings, PORT=str(port), WEB_CONCURRENCY="2", GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{port}"
    )
    web = ProcfileProcess("web", env).start()
    try:
        wait_for(lambda: _get_status(port, "/health") == 200, 60, web, "answer on /health")
        yield port
    finally:
        web.kill()


def _get_status(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[PrivateRedisCluster]:
    """A private 6-node Redis Cluster (3 masters, 3 replicas), killed at the end whatever happened."""
    with PrivateRedisCluster() as cluster:
        yield cluster
