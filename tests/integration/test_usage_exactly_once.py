"""GET /api/v1/usage counts every pulse once at any instant (issue 13).

The endpoint is read in a loop while pulses arrive and flushes rename, persist and
expire snapshots, one flush process killed after its rename and one after its commit:
the harness of the pending reads (tests/support/pending_chaos.py) holds every answer
to the ledger of what was counted before it, and to totals that never go down.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from tests.support.pending_chaos import Ingest, Totals, reads_during_ingest_and_killed_flushes

pytestmark = pytest.mark.usefixtures("clean_state")

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
HOURS = [NOW - timedelta(hours=3), NOW - timedelta(hours=2)]
RANGE = {"from": (NOW - timedelta(days=1)).isoformat(), "to": (NOW + timedelta(hours=1)).isoformat()}


def endpoint_reader(client, auth):
    """A read of the endpoint's per-tenant totals, over HTTP (the app's WSGI interface)."""

    def read(tenants: list[str] | None) -> Totals:
        params = {**RANGE, "group_by": "tenant", "window_size": "day"}
        if tenants is not None:
            params["tenant"] = tenants
        for _ in range(20):
            response = client.get("/api/v1/usage", query_string=params, headers=auth)
            if response.status_code != 503:  # a layout changing under 5 reads: retry, as a client does
                break
        assert response.status_code == 200, response.get_json()
        totals: dict[str, list[int]] = {}
        for row in response.get_json()["rows"]:
            total = totals.setdefault(row["tenant"], [0, 0])
            total[0] += int(Decimal(row["used_amount"]) * 10**6)
            total[1] += row["pulse_count"]
        return {tenant: (micro, count) for tenant, (micro, count) in totals.items()}

    return read


def test_answers_during_ingest_and_flushes_killed_mid_way_count_every_pulse_once(app, client, auth, tmp_path):
    ingest = Ingest(app.extensions["pulses"].counter, HOURS[0])
    reads = reads_during_ingest_and_killed_flushes(
        endpoint_reader(client, auth), app, ingest, HOURS, tmp_path
    )
    assert reads["before_commit"] == reads["after_commit"] == 1
