"""Login, users, and the bearer token every protected route requires."""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime, timedelta, timezone

import jwt as pyjwt
import pytest
from flask_jwt_extended import create_access_token

from tests.support.api import PASSWORD

PUBLIC_ENDPOINTS = {"auth.login", "health.health", "health.ready", "metrics.metrics", "api-docs.openapi_json", "static"}


def test_login_returns_a_bearer_token(client, user):
    response = client.post("/api/v1/login", json={"username": user, "password": PASSWORD})

    assert response.status_code == 200
    body = response.get_json()
    assert body["token_type"] == "Bearer"
    assert body["access_token"].count(".") == 2
    expires_at = datetime.fromisoformat(body["expires_at"])
    assert timedelta(minutes=59) < expires_at - datetime.now(timezone.utc) <= timedelta(hours=1)


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
    other_key = pyjwt.encode({"sub": "alice", "type": "access", "fresh": False, "jti": "x",
                              "exp": 2**40, "iat": 0, "nbf": 0}, "another-secret-key-of-enough-length", "HS256")  # fmt: skip
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
