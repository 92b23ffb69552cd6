"""Fixtures of the API tests: a user, a token, a client recording every status code."""

from __future__ import annotations

import pytest
from flask import Flask
from sqlalchemy import text

from tests.support.api import PASSWORD, StatusRecorder

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
