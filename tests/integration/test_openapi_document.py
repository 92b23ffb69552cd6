"""The OpenAPI document is complete and true.

Runs after the other API test modules (file order) and checks every status code they
saw an endpoint answer against what the document says it can answer.
"""

from __future__ import annotations

import pytest

from tests.integration.conftest import STATUS_RECORDER
from tests.support.api import openapi_path


@pytest.fixture
def spec(client) -> dict:
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def test_every_route_and_method_is_documented(app, spec):
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "api-docs.openapi_json"):
            continue
        operations = spec["paths"].get(openapi_path(rule.rule))
        assert operations is not None, f"{rule.rule} is missing from the OpenAPI document"
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in operations, f"{method} {rule.rule} is not documented"


def test_every_protected_operation_documents_401(spec):
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":  # path parameters, not an operation
                continue
            if operation.get("security", spec["security"]):
                assert "401" in operation["responses"], f"{method.upper()} {path} omits 401"


def test_every_status_the_tests_saw_is_documented(spec):
    if len(STATUS_RECORDER.seen) < 10:
        pytest.skip("run together with the API test modules, which record what the endpoints answer")
    undocumented = sorted(
        (method, rule, status)
        for rule, method, status in STATUS_RECORDER.seen
        if rule != "/api/v1/openapi.json"
        and str(status) not in spec["paths"][openapi_path(rule)][method.lower()]["responses"]
    )
    assert undocumented == []
