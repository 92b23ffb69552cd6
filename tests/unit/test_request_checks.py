"""The request checks as plain logic: the bounded body stream, the query contract, messages."""

from __future__ import annotations

from io import BytesIO

import pytest
from flask import Flask
from werkzeug.exceptions import RequestEntityTooLarge

from ingestor.api.bodies import ApiRequest, BodyTooLarge, describe_limit
from ingestor.api.parsing import BodyError, decode_json, summarize
from ingestor.api.query_strings import QueryContract, QueryParameterError

SPEC = {
    "paths": {
        "/things": {
            "get": {
                "parameters": [
                    {"in": "query", "name": "page", "schema": {"type": "integer"}},
                    {"in": "query", "name": "tag", "schema": {"type": "array"}},
                ]
            },
            "post": {},
        },
        "/things/{id}": {"parameters": [{"in": "path", "name": "id"}], "get": {}},
    }
}


@pytest.fixture(scope="module")
def app() -> Flask:
    app = Flask(__name__)
    app.request_class = ApiRequest
    app.config["MAX_CONTENT_LENGTH"] = 10
    for rule in ("/things", "/things/<int:id>"):
        app.add_url_rule(rule, rule, lambda **_: "", methods=["GET", "POST"])
    return app


def terminated_body(app: Flask, body: bytes) -> bytes:
    environ = {"wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"}
    with app.test_request_context(
        "/things", method="POST", input_stream=BytesIO(body), environ_overrides=environ
    ):
        from flask import request

        return request.get_data()


@pytest.mark.parametrize("size", [0, 1, 9, 10])
def test_a_terminated_body_up_to_the_limit_is_read_whole(app, size):
    assert terminated_body(app, b"x" * size) == b"x" * size


@pytest.mark.parametrize("size", [11, 12, 10_000])
def test_a_terminated_body_past_the_limit_is_refused_not_cut(app, size):
    with pytest.raises(BodyTooLarge) as refused:
        terminated_body(app, b"x" * size)
    assert isinstance(refused.value, RequestEntityTooLarge)
    assert "10 bytes (10 Bytes)" in refused.value.description


def test_describe_limit_in_bytes_and_human_terms():
    assert describe_limit(2 * 1024 * 1024) == "2097152 bytes (2.0 MiB)"


def check(app: Flask, path: str) -> None:
    with app.test_request_context(path):
        from flask import request

        QueryContract(SPEC).check(request)


@pytest.mark.parametrize("path", ["/things", "/things?page=2", "/things?tag=a&tag=b&page=1", "/things/1"])
def test_documented_parameters_pass(app, path):
    check(app, path)


@pytest.mark.parametrize(
    ("path", "named", "hint"),
    [
        ("/things?pag=2", "pag", "did you mean 'page'?"),
        ("/things/1?page=2", "page", "it takes none"),
        ("/things?page=1&page=2", "page", "2 times"),
    ],
)
def test_unknown_and_repeated_parameters_are_named(app, path, named, hint):
    with pytest.raises(QueryParameterError) as refused:
        check(app, path)
    assert named in refused.value.description and hint in refused.value.description
    assert list(refused.value.data["messages"]["query"]) == [named]


def test_numbers_too_long_are_refused_with_their_length():
    assert decode_json("[" + "9" * 100 + "]") == [int("9" * 100)]
    with pytest.raises(BodyError, match="101 digits"):
        decode_json("[" + "9" * 101 + "]")
    with pytest.raises(BodyError, match="too long"):
        decode_json('{"a": 1.' + "5" * 200 + "}")


def test_summarize_names_each_argument():
    messages = {"query": {"limit": ["Must be at most 1000."]}, "json": {"rate": ["Unknown field."]}}
    assert (
        summarize(messages)
        == "Invalid query parameter 'limit': Must be at most 1000; Unknown body field 'rate'."
    )
