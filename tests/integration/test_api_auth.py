"""Login, users, and the bearer token every protected route requires."""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import jwt as pyjwt
import pytest
from flask_jwt_extended import create_access_token
from sqlalchemy import text

from ingestor import create_app
from tests.support.api import PASSWORD

PUBLIC_ENDPOINTS = {
    "auth.login",
    "health.health",
    "health.ready",
    "metrics.metrics",
    "api-docs.openapi_json",
    "static",
}


def test_login_returns_a_bearer_token(client, user):
    response = client.post("/api/v1/login", json={"username": user, "password": PASSWORD})

    assert response.status_code == 200
    body = response.get_json()
    assert body["token_type"] == "Bearer"
    assert body["access_token"].count(".") == 2
    expires_at = datetime.fromisoformat(body["expires_at"])
    assert timedelta(minutes=59) < expires_at - datetime.now(UTC) <= timedelta(hours=1)


@pytest.mark.parametrize(
    "credentials",
    [{"username": "alice", "password": "wrong password"}, {"username": "nobody", "password": PASSWORD}],
)
def test_wrong_credentials_are_401(client, user, credentials):
    response = client.post("/api/v1/login", json=credentials)

    assert response.status_code == 401
    assert response.get_json()["error"] == {"code": "unauthorized", "message": "Wrong username or password."}


@pytest.mark.parametrize(
    ("body", "content_type", "field"),
    [
        ({"username": "alice"}, "application/json", "password"),
        ({"password": PASSWORD}, "application/json", "username"),
        ({"username": 5, "password": PASSWORD}, "application/json", "username"),
        ({"username": "alice", "password": ["x"]}, "application/json", "password"),
        ({"username": "alice", "password": PASSWORD, "admin": True}, "application/json", "admin"),
        ({"username": "", "password": PASSWORD}, "application/json", "username"),
        ("username=alice", "application/x-www-form-urlencoded", "username"),
        ('{"username": "alice", ', "application/json", None),
        ("[" * 50_000, "application/json", None),
        ('["alice"]', "application/json", None),
        ('{"username": "\\u0000\' OR 1=1 --", "password": "x"}', "application/json", None),
    ],
)
def test_malformed_login_bodies_are_4xx_json(client, user, body, content_type, field):
    data = json.dumps(body) if isinstance(body, dict) else body
    response = client.post("/api/v1/login", data=data, content_type=content_type)

    assert response.status_code in (400, 401), response.get_json()
    error = response.get_json()["error"]
    assert error["code"] in ("bad_request", "unauthorized")
    if field:
        assert field in json.dumps(error["details"])


def test_a_huge_login_body_is_413(client, user):
    response = client.post("/api/v1/login", data="x" * (3 * 1024 * 1024), content_type="application/json")

    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"


def test_users_create_refuses_duplicates_and_short_passwords(app, user):
    runner = app.test_cli_runner()
    duplicate = runner.invoke(args=["users", "create", user, "--password", PASSWORD])
    short = runner.invoke(args=["users", "create", "bob", "--password", "short"])

    assert duplicate.exit_code != 0 and "already exists" in duplicate.output
    assert short.exit_code != 0 and "at least 12" in short.output


def _tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "mallory"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"{header}.{forged}.{signature}"


def bad_authorizations(app, token: str) -> dict[str, dict[str, str]]:
    with app.app_context():
        expired = create_access_token("alice", expires_delta=timedelta(seconds=-30))
    other_key = pyjwt.encode(
        {"sub": "alice", "type": "access", "fresh": False, "jti": "x", "exp": 2**40, "iat": 0, "nbf": 0},
        "another-secret-key-of-enough-length",
        "HS256",
    )
    unsigned = pyjwt.encode({"sub": "alice", "type": "access", "exp": 2**40}, None, "none")
    return {
        "missing": {},
        "malformed": {"Authorization": "Bearer not-a-jwt"},
        "wrong scheme": {"Authorization": f"Basic {token}"},
        "empty bearer": {"Authorization": "Bearer "},
        "expired": {"Authorization": f"Bearer {expired}"},
        "tampered": {"Authorization": f"Bearer {_tampered(token)}"},
        "other key": {"Authorization": f"Bearer {other_key}"},
        "alg none": {"Authorization": f"Bearer {unsigned}"},
    }


def protected_routes(app) -> list[tuple[str, str]]:
    """Every (method, url) of the app but the public ones, read from the URL map."""
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint in PUBLIC_ENDPOINTS:
            continue
        url = re.sub(r"<int:[^>]+>", "1", rule.rule)
        url = re.sub(r"<[^>]+>", "some-id", url)
        routes += [(method, url) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return routes


def test_every_protected_route_answers_401_to_every_bad_token(app, client, token):
    routes = protected_routes(app)
    assert len(routes) >= 5, routes  # the map really was read
    for method, url in routes:
        for name, headers in bad_authorizations(app, token).items():
            # A body that would be invalid: authentication must come first.
            response = client.open(url, method=method, headers=headers, json={"junk": True})
            assert response.status_code == 401, (method, url, name, response.get_json())
            assert response.get_json()["error"]["code"] == "unauthorized", (method, url, name)


def test_public_routes_need_no_token(client):
    assert client.get("/health").status_code == 200
    assert client.get("/api/v1/openapi.json").status_code == 200
    assert client.get("/ready").status_code in (200, 503)


def _users(app, *args: str):
    return app.test_cli_runner().invoke(args=["users", *args])


def _every_protected_route_answers(app, client, headers: dict[str, str]) -> set[int]:
    """The statuses of every protected route called with `headers` (bodies that are invalid)."""
    return {
        client.open(url, method=method, headers=headers, json={"junk": True}).status_code
        for method, url in protected_routes(app)
    }


def test_a_deleted_users_token_stops_working_at_once_even_if_the_name_is_reused(app, client, auth):
    assert 401 not in _every_protected_route_answers(app, client, auth)

    deleted = _users(app, "delete", "alice")
    assert deleted.exit_code == 0, deleted.output

    response = client.get("/api/v1/pulses", headers=auth)
    assert response.status_code == 401
    assert "no longer exists" in response.get_json()["error"]["message"]
    assert _every_protected_route_answers(app, client, auth) == {401}
    # A new user under the old name is another user: the old token stays refused.
    assert _users(app, "create", "alice", "--password", PASSWORD).exit_code == 0
    assert client.get("/api/v1/pulses", headers=auth).status_code == 401
    fresh = client.post("/api/v1/login", json={"username": "alice", "password": PASSWORD}).get_json()
    assert (
        client.get("/api/v1/pulses", headers={"Authorization": f"Bearer {fresh['access_token']}"}).status_code
        == 200
    )


def test_a_disabled_user_cannot_log_in_and_its_tokens_stop_working_until_enabled(app, client, auth):
    disabled = _users(app, "disable", "alice")
    assert disabled.exit_code == 0, disabled.output

    assert _every_protected_route_answers(app, client, auth) == {401}
    login = client.post("/api/v1/login", json={"username": "alice", "password": PASSWORD})
    assert login.status_code == 403 and "disabled" in login.get_json()["error"]["message"]
    # A wrong password tells nothing about the account.
    wrong = client.post("/api/v1/login", json={"username": "alice", "password": "wrong password"})
    assert wrong.status_code == 401

    assert _users(app, "enable", "alice").exit_code == 0
    assert client.get("/api/v1/pulses", headers=auth).status_code == 200
    assert client.post("/api/v1/login", json={"username": "alice", "password": PASSWORD}).status_code == 200


# USER_CACHE_SECONDS of the test below: long enough for its first steps on a loaded machine.
CACHE_SECONDS = 3


def test_a_deleted_users_token_works_for_the_user_cache_seconds_then_is_refused(app, client, auth, settings):
    cached = create_app(replace(settings, user_cache_seconds=CACHE_SECONDS)).test_client()
    looked_up = time.monotonic()  # at most when the user row was read
    assert cached.get("/api/v1/pulses", headers=auth).status_code == 200
    assert _users(app, "delete", "alice").exit_code == 0
    assert client.get("/api/v1/pulses", headers=auth).status_code == 401, "no cache: refused at once"

    # Within the cache seconds the row is not read again: the token still works there.
    assert cached.get("/api/v1/pulses", headers=auth).status_code == 200
    assert time.monotonic() - looked_up < CACHE_SECONDS, "too slow to see the cache: nothing proven"
    while (status := cached.get("/api/v1/pulses", headers=auth).status_code) == 200:
        assert time.monotonic() - looked_up < CACHE_SECONDS + 5, "still accepted long past the cache seconds"
        time.sleep(0.1)
    assert status == 401
    assert time.monotonic() - looked_up >= CACHE_SECONDS


def test_a_token_signed_for_a_user_that_never_existed_is_refused(app, client, user, database):
    with database.engine.connect() as connection:
        user_id = connection.execute(
            text("SELECT id FROM api_user WHERE username = :u"), {"u": user}
        ).scalar_one()
    with app.app_context():
        nobody = create_access_token("nobody", additional_claims={"uid": 10**9})
        no_user_id = create_access_token(user)  # the right name, but no user row named
        wrong_name = create_access_token("mallory", additional_claims={"uid": user_id})
        right = create_access_token(user, additional_claims={"uid": user_id})

    assert client.get("/api/v1/pulses", headers={"Authorization": f"Bearer {right}"}).status_code == 200

    for token in (nobody, no_user_id, wrong_name):
        assert client.get("/api/v1/pulses", headers={"Authorization": f"Bearer {token}"}).status_code == 401


@pytest.mark.parametrize("command", ["disable", "enable", "delete"])
def test_users_commands_name_an_unknown_user(app, user, command):
    result = _users(app, command, "nobody")

    assert result.exit_code != 0 and "no user 'nobody'" in result.output
