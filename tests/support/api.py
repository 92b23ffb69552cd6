"""Helpers for API tests: users, tokens, and a record of every status code answered."""

from __future__ import annotations

import pytest
from flask import Flask, request, request_finished

PASSWORD = "correct horse battery staple"


class StatusRecorder:
    """Collects (rule, method, status) of every response, to check them against the spec."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str, int]] = set()

    def connect(self, app: Flask) -> None:
        request_finished.connect(self._record, app, weak=False)

    def _record(self, sender: Flask, response, **_: object) -> None:
        if request.url_rule is not None:
            self.seen.add((request.url_rule.rule, request.method, response.status_code))


def openapi_path(rule: str) -> str:
    """Flask rule `/api/v1/pulses/<int:usage_id>` as OpenAPI path `/api/v1/pulses/{usage_id}`."""
    import re

    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def post_until_accepted(client, auth: dict[str, str], pulses: list[dict], statuses: list[int]) -> dict:
    """POST `pulses` until a 202, as a client honouring 503 does; every status in `statuses`."""
    for _ in range(60):
        response = client.post("/api/v1/pulses", json=pulses, headers=auth)
        statuses.append(response.status_code)
        if response.status_code == 202:
            return response.get_json()
        assert response.status_code == 503, response.get_json()
        assert "retry" in response.get_json()["error"]["message"]
    pytest.fail("the API never accepted the request")
