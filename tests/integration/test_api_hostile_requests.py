"""Hostile and careless requests: nothing is silently cut, broadened or ignored.

- A body is read whole or refused, whatever its framing: `Content-Length`, chunked
  (curl and `http.client` against gunicorn, the server the Procfile runs; werkzeug's
  development server; the Flask test client), or none at all (411). The body whose
  first MAX_BODY_BYTES bytes are valid JSON is the one that used to be cut there and
  answered 202.
- Every route refuses an unknown query parameter, a repeated one that is not a
  multi-value filter, and a body where it takes none: the routes are read from the
  URL map, so a new route is covered without editing this file.
- Messages a user can act on: the limit of a 413, a number too long, a bare `+` in a
  query string.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from io import BytesIO

import pytest
from werkzeug.serving import make_server
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from tests.support.worker import queue_depth

PULSE = {"tenant": "acme", "product_sku": "vm", "use_unity": "hour", "used_amount": "1.5"}
# Routes whose path takes a value, and a value that reaches the view.
PATH_VALUES = {"int": "1", "default": "some-id"}


def padded(document: object, size: int) -> bytes:
    """`document` as JSON, padded with spaces to exactly `size` bytes: still valid JSON."""
    body = json.dumps(document).encode()
    assert len(body) <= size
    return body + b" " * (size - len(body))


@pytest.fixture(scope="module")
def limit(settings) -> int:
    return settings.max_body_bytes


@pytest.fixture(scope="module")
def bodies(limit) -> dict[str, bytes]:
    return {
        "exactly the limit": padded(PULSE, limit),
        "one byte over": padded(PULSE, limit + 1),
        # The first `limit` bytes are a whole pulse: cut there, it parses (and used to be 202).
        "valid prefix": padded(PULSE, limit) + b"[" + json.dumps([PULSE] * 100).encode()[1:],
        "half again": padded([PULSE] * (limit // 2 // len(json.dumps(PULSE))), limit * 3 // 2),
    }


def assert_names_the_limit(status: int, answer: dict, limit: int) -> None:
    assert status == 413, answer
    message = answer["error"]["message"]
    assert f"{limit} bytes" in message and "MiB" in message, message
    assert answer["error"]["details"]["max_body_bytes"] == limit


# --- gunicorn, as the Procfile runs it ----------------------------------------------------


def post_chunked(
    port: int, body: bytes, auth: dict[str, str], path: str = "/api/v1/pulses"
) -> tuple[int, dict]:
    """POST `body` with `Transfer-Encoding: chunked` (http.client's own encoder)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    chunks = (body[start : start + 65536] for start in range(0, len(body), 65536))
    try:
        connection.request(
            "POST",
            path,
            body=chunks,
            encode_chunked=True,
            headers={"Content-Type": "application/json", **auth},
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def post_unframed(port: int, body: bytes, auth: dict[str, str]) -> tuple[int, dict]:
    """POST `body` with neither Content-Length nor Transfer-Encoding (HTTP/1.0, then close).

    The answer is read before the body is sent: a server that cannot find a body's end
    must answer without waiting for it (and closes, so the body may not go through).
    """
    head = "".join(
        f"{name}: {value}\r\n" for name, value in {"Content-Type": "application/json", **auth}.items()
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"POST /api/v1/pulses HTTP/1.0\r\nHost: 127.0.0.1\r\n{head}\r\n".encode())
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
        with contextlib.suppress(OSError):
            sock.sendall(body)
    head_part, _, payload = response.partition(b"\r\n\r\n")
    return int(head_part.split()[1]), json.loads(payload)


@pytest.mark.usefixtures("clean_state")
@pytest.mark.parametrize("case", ["one byte over", "valid prefix", "half again"])
def test_gunicorn_refuses_chunked_bodies_past_the_limit(gunicorn, auth, settings, limit, bodies, case):
    status, answer = post_chunked(gunicorn, bodies[case], auth)

    assert_names_the_limit(status, answer, limit)
    assert queue_depth(settings.broker_url, "pulses") == 0


@pytest.mark.usefixtures("clean_state")
@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_a_client_still_sending_a_body_far_past_the_limit_gets_the_413(
    gunicorn, auth, settings, limit, framing
):
    # 6 times the limit: answered and closed with megabytes unread, the server's kernel
    # reset the connection, and http.client, still sending, got a broken pipe.
    body = padded(PULSE, 6 * limit)
    if framing == "chunked":
        status, answer = post_chunked(gunicorn, body, auth)
    else:
        connection = http.client.HTTPConnection("127.0.0.1", gunicorn, timeout=30)
        try:
            connection.request(
                "POST", "/api/v1/pulses", body=body, headers={"Content-Type": "application/json", **auth}
            )
            response = connection.getresponse()
            status, answer = response.status, json.loads(response.read())
        finally:
            connection.close()

    assert_names_the_limit(status, answer, limit)
    assert queue_depth(settings.broker_url, "pulses") == 0


@pytest.mark.usefixtures("clean_state")
def test_gunicorn_takes_a_chunked_body_of_exactly_the_limit_whole(gunicorn, auth, settings, bodies):
    status, answer = post_chunked(gunicorn, bodies["exactly the limit"], auth)

    assert (status, answer["accepted"]) == (202, 1), answer
    assert queue_depth(settings.broker_url, "pulses") == 1


@pytest.mark.usefixtures("clean_state")
@pytest.mark.parametrize(("case", "status"), [("valid prefix", 413), ("exactly the limit", 202)])
def test_curl_chunked_upload_against_gunicorn(
    gunicorn, auth, settings, limit, bodies, tmp_path, case, status
):
    body_file = tmp_path / "body.json"
    body_file.write_bytes(bodies[case])
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "-X",
            "POST",
            f"http://127.0.0.1:{gunicorn}/api/v1/pulses",
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Content-Type: application/json",
            "-H",
            f"Authorization: {auth['Authorization']}",
            "--data-binary",
            f"@{body_file}",
            "-w",
            "\n%{http_code}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    payload, _, code = result.stdout.rpartition("\n")

    if status == 413:
        assert_names_the_limit(int(code), json.loads(payload), limit)
        assert queue_depth(settings.broker_url, "pulses") == 0
    else:
        assert (int(code), json.loads(payload)["accepted"]) == (202, 1)


@pytest.mark.usefixtures("clean_state")
def test_gunicorn_refuses_a_content_length_past_the_limit_naming_it(gunicorn, auth, settings, limit, bodies):
    connection = http.client.HTTPConnection("127.0.0.1", gunicorn, timeout=30)
    connection.request(
        "POST",
        "/api/v1/pulses",
        body=bodies["one byte over"],
        headers={"Content-Type": "application/json", **auth},
    )
    response = connection.getresponse()

    assert_names_the_limit(response.status, json.loads(response.read()), limit)
    connection.close()


@pytest.mark.usefixtures("clean_state")
def test_gunicorn_refuses_an_unframed_body(gunicorn, auth, settings, limit, bodies):
    status, answer = post_unframed(gunicorn, bodies["half again"], auth)

    assert status == 411, answer
    assert "Content-Length" in answer["error"]["message"] and "chunked" in answer["error"]["message"]
    assert queue_depth(settings.broker_url, "pulses") == 0


# --- werkzeug's development server (`flask run`) and the Flask test client ----------------


@pytest.fixture(scope="module")
def dev_server(recorded_app) -> Iterator[int]:
    server = make_server("127.0.0.1", 0, recorded_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port
    server.shutdown()
    thread.join(10)


@pytest.mark.usefixtures("clean_state")
def test_dev_server_refuses_chunked_past_the_limit_and_unframed(dev_server, auth, settings, limit, bodies):
    assert_names_the_limit(*post_chunked(dev_server, bodies["valid prefix"], auth), limit)
    assert post_unframed(dev_server, bodies["valid prefix"], auth)[0] == 411
    assert post_chunked(dev_server, bodies["exactly the limit"], auth)[0] == 202
    assert queue_depth(settings.broker_url, "pulses") == 1


@pytest.mark.usefixtures("clean_state")
def test_test_client_refuses_a_terminated_stream_past_the_limit(client, auth, settings, limit, bodies):
    # What a server that de-chunks sets (gunicorn, werkzeug's): the stream ends with the body.
    response = client.post(
        "/api/v1/pulses",
        input_stream=BytesIO(bodies["valid prefix"]),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked", **auth},
        environ_overrides={"wsgi.input_terminated": True},
    )
    # The test client always computes a Content-Length: take it out, as no client sent one.
    environ = EnvironBuilder(
        path="/api/v1/pulses",
        method="POST",
        input_stream=BytesIO(bodies["valid prefix"]),
        headers={"Content-Type": "application/json", **auth},
    ).get_environ()
    del environ["CONTENT_LENGTH"]
    unframed = client.open(Request(environ))
    # A chunked body through a server that does not mark where it ends (werkzeug would read it as empty).
    unterminated = client.post(
        "/api/v1/pulses",
        input_stream=BytesIO(bodies["exactly the limit"]),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked", **auth},
    )

    assert_names_the_limit(response.status_code, response.get_json(), limit)
    assert unframed.status_code == 411, unframed.get_json()
    assert unterminated.status_code == 411, unterminated.get_json()
    assert queue_depth(settings.broker_url, "pulses") == 0


@pytest.mark.parametrize("path", ["/api/v1/login", "/api/v1/pulses/populate"])
def test_every_body_route_refuses_past_the_limit(client, auth, limit, bodies, path):
    response = client.post(
        path,
        input_stream=BytesIO(bodies["valid prefix"]),
        headers={"Content-Type": "application/json", **auth},
        environ_overrides={"wsgi.input_terminated": True},
    )

    assert_names_the_limit(response.status_code, response.get_json(), limit)


# --- every route: unknown and repeated query parameters, bodies where none is taken -------


def every_route(app) -> list[tuple[str, str]]:
    """(method, url) of every route of the app, path values filled in."""
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        url = re.sub(
            r"<(?:(\w+)(?:\([^)]*\))?:)?\w+>",
            lambda m: PATH_VALUES.get(m.group(1) or "default", PATH_VALUES["default"]),
            rule.rule,
        )
        routes += [(method, url) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return routes


def test_every_route_refuses_unknown_query_parameters_naming_them(app, client, auth, clean_state):
    routes = every_route(app)
    assert len(routes) >= 10, routes
    for method, url in routes:
        body = {"json": {}} if method == "POST" else {}
        response = client.open(f"{url}?tennant=acme&x%20y=1", method=method, headers=auth, **body)

        assert response.status_code == 400, (method, url, response.get_json())
        error = response.get_json()["error"]
        assert "tennant" in error["message"] and "x y" in error["message"], (method, url, error)
        assert set(error["details"]["query"]) == {"tennant", "x y"}, (method, url, error)


def test_a_bad_token_is_answered_before_the_query_string(client, clean_state):
    response = client.get("/api/v1/pulses?tennant=acme&page=1&page=2", json={"body": "on a GET"})

    assert response.status_code == 401, response.get_json()


def documented_query_parameters(client) -> dict[tuple[str, str], dict[str, dict]]:
    spec = client.get("/api/v1/openapi.json").get_json()
    found = {}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method != "parameters":
                query = {
                    p["name"]: p["schema"] for p in operation.get("parameters", []) if p["in"] == "query"
                }
                found[(method.upper(), path)] = query
    return found


def test_a_repeated_single_value_parameter_is_400_on_every_route(client, auth, clean_state):
    documented = documented_query_parameters(client)
    checked = 0
    for (method, path), parameters in documented.items():
        url = re.sub(r"\{\w+\}", "1", path)
        for name, schema in parameters.items():
            if schema.get("type") == "array":
                continue
            response = client.open(f"{url}?{name}=1&{name}=2", method=method, headers=auth)
            assert response.status_code == 400, (method, path, name, response.get_json())
            error = response.get_json()["error"]
            assert name in error["message"] and "2 times" in error["message"], error
            checked += 1
    assert checked >= 5


def test_a_multi_value_filter_is_documented_as_one(client):
    parameters = documented_query_parameters(client)[("GET", "/api/v1/pulses")]
    assert {name for name, schema in parameters.items() if schema.get("type") == "array"} == {
        "tenant",
        "product_sku",
        "use_unity",
    }


def test_every_route_refuses_a_body_where_it_takes_none(app, client, auth, clean_state):
    checked = 0
    for method, url in every_route(app):
        if method in ("GET", "DELETE"):
            response = client.open(url, method=method, headers=auth, json={"tenant": "acme"})
            assert response.status_code == 400, (method, url, response.get_json())
            assert "no body" in response.get_json()["error"]["message"]
            checked += 1
    assert checked >= 6


def test_unknown_body_fields_are_400_naming_them_but_pulses_keep_theirs(client, auth, user, settings):
    login = client.post("/api/v1/login", json={"username": user, "password": "x", "remember_me": True})
    populate = client.post("/api/v1/pulses/populate", json={"total_messages": 10, "rate": 3}, headers=auth)
    # The design's rule for producers: unknown pulse fields are ignored, the pulse is counted.
    pulses = client.post("/api/v1/pulses", json={**PULSE, "region": "eu-west"}, headers=auth)

    assert login.status_code == 400 and "remember_me" in login.get_json()["error"]["message"]
    assert populate.status_code == 400 and "rate" in populate.get_json()["error"]["message"]
    assert pulses.status_code == 202 and pulses.get_json()["accepted"] == 1


def test_one_invalid_pulse_alone_is_422_saying_it_is_not_valid(client, auth, clean_state):
    response = client.post("/api/v1/pulses", json={**PULSE, "used_amount": "-1"}, headers=auth)

    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["message"].startswith("The pulse is not valid, so nothing was accepted")
    assert error["details"] == {
        "accepted": 0,
        "rejected": [{"index": 0, "errors": {"used_amount": ["Must not be negative."]}}],
    }


# --- messages a user can act on ------------------------------------------------------------


def test_a_number_too_long_says_so(client, auth, settings, clean_state):
    response = client.post(
        "/api/v1/pulses",
        data='{"used_amount": ' + "9" * 100_000 + "}",
        content_type="application/json",
        headers=auth,
    )

    assert response.status_code == 400
    message = response.get_json()["error"]["message"]
    assert "100000 digits" in message and "at most" in message, message
    assert "sys.set_int_max_str_digits" not in message
    assert queue_depth(settings.broker_url, "pulses") == 0


@pytest.mark.parametrize("parameter", ["from", "to"])
def test_an_unencoded_plus_in_a_query_datetime_gets_the_hint(client, auth, clean_state, parameter):
    response = client.get(f"/api/v1/pulses?{parameter}=2026-11-01T00:00:00+01:00", headers=auth)
    encoded = client.get(f"/api/v1/pulses?{parameter}=2026-11-01T00:00:00%2B01:00", headers=auth)

    assert response.status_code == 400
    error = response.get_json()["error"]
    assert parameter in error["message"] and "%2B" in error["message"], error
    assert "%2B" in str(error["details"]["query"][parameter])
    assert encoded.status_code == 200, encoded.get_json()


def test_a_bad_query_value_is_named_in_the_message(client, auth, clean_state):
    error = client.get("/api/v1/pulses?limit=5000", headers=auth).get_json()["error"]

    assert "limit" in error["message"] and "1000" in error["message"], error
