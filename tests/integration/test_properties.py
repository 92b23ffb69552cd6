"""Property tests against the real Redis and PostgreSQL (guarantees 3 and 6).

- Any list of valid amounts, in any hours, sums exactly through the real Lua script
  and the real flush: the persisted row equals the Decimal sum, to the micro-unit.
- Any junk (broken pulses, non-pulses, non-JSON bodies, deep nesting, huge strings,
  control characters) gets a clear rejection and changes no sum: through the API
  (a 4xx, never a 2xx: 422 naming every pulse's reasons, or 400/413) and through a
  worker's ingest (every pulse in the rejected-pulses table, nothing counted).

Fixtures are shared by all examples of a test: each example works under a tenant or
message id of its own. `max_examples` is small: every example is a real round trip.
"""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from ingestor.pulses import keys
from ingestor.pulses.ingest import ingest_batch
from tests.support.ledger import Ledger, persisted_sums
from tests.support.strategies import amount_forms, broken_pulses, junk_bodies, not_pulses, past_timestamps
from tests.support.worker import queue_depth

pytestmark = [pytest.mark.property, pytest.mark.usefixtures("clean_state")]

ROUND_TRIPS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@ROUND_TRIPS
@given(st.lists(st.tuples(amount_forms, past_timestamps(24 * 3)), min_size=1, max_size=40))
def test_any_valid_amounts_sum_exactly_through_redis_and_persist(app, database, entries) -> None:
    tenant = f"prop-{uuid.uuid4()}"
    ledger = Ledger()
    pulses = []
    for amount, timestamp in entries:
        pulses.append(
            {
                "tenant": tenant,
                "product_sku": "sku",
                "use_unity": "u",
                "used_amount": amount,
                "timestamp": timestamp.isoformat(),
            }
        )
        ledger.add(tenant, "sku", "u", timestamp.replace(minute=0, second=0, microsecond=0), Decimal(amount))
    services = app.extensions["pulses"]
    countable, rejected = services.validator.split(
        pulses,
        fallback_key=lambda index: keys.position_in_message(tenant, index),
        received_at=entries[0][1],
    )
    assert rejected == []
    assert services.counter.count(countable) == len(pulses)
    services.persister.persist_pending()

    persisted = {group: sums for group, sums in persisted_sums(database).items() if group[0] == tenant}
    assert persisted == ledger.expected()


junk_pulse_lists = st.lists(
    st.one_of(broken_pulses().map(lambda case: case[0]), not_pulses), min_size=1, max_size=5
)


@ROUND_TRIPS
@given(st.one_of(junk_bodies, junk_pulse_lists.map(lambda pulses: json.dumps(pulses, default=str).encode())))
def test_junk_posted_to_the_api_is_rejected_clearly_and_enqueues_nothing(
    client, auth, settings, body
) -> None:
    response = client.post("/api/v1/pulses", data=body, content_type="application/json", headers=auth)

    answer = response.get_json()
    # Nothing valid, so never a 2xx: 422 with every pulse's reasons, 400 for a body that
    # is not pulses at all (411 for an empty one, sent without a Content-Length).
    assert response.status_code in (400, 411, 413, 422), answer
    assert answer["error"]["message"]
    if response.status_code == 422:
        rejected = answer["error"]["details"]["rejected"]
        sent = json.loads(body)
        assert [r["index"] for r in rejected] == list(range(len(sent) if isinstance(sent, list) else 1))
        assert all(r["errors"] for r in rejected)
    assert queue_depth(settings.broker_url, "pulses") == 0


@ROUND_TRIPS
@given(junk_pulse_lists)
def test_junk_pulses_in_a_batch_are_quarantined_and_count_nothing(
    app, database, redis_client, pulses
) -> None:
    message_id = str(uuid.uuid4())
    services = app.extensions["pulses"]
    report = ingest_batch(
        pulses,
        message_id=message_id,
        source="property",
        validator=services.validator,
        counter=services.counter,
        database=database,
    )

    assert (report.counted, report.rejected) == (0, len(pulses))
    assert redis_client.exists(keys.registry_key(keys.SHARD_TAGS[0])) == 0
    with database.engine.connect() as connection:
        positions = (
            connection.execute(
                text("SELECT position FROM rejected_pulse WHERE message_id = :id ORDER BY position"),
                {"id": message_id},
            )
            .scalars()
            .all()
        )
    assert positions == list(range(len(pulses)))


# Query strings as a careless or hostile client writes them: the documented names, near
# misses, repeats, empty and control-character values, a bare `+`.
query_names = st.sampled_from(
    [
        "page",
        "limit",
        "cursor",
        "tenant",
        "product_sku",
        "use_unity",
        "from",
        "to",
        "tennant",
        "Limit",
        "",
        "x y",
    ]
)
query_values = st.one_of(st.text(max_size=30), st.integers().map(str), st.just("2026-11-01T00:00:00+01:00"))


@ROUND_TRIPS
@given(
    st.lists(st.tuples(query_names, query_values), min_size=1, max_size=6), st.sampled_from(["GET", "POST"])
)
def test_any_query_string_is_answered_without_a_server_error(app, client, auth, query, method) -> None:
    routes = sorted(
        {rule.rule for rule in app.url_map.iter_rules() if method in rule.methods and "<" not in rule.rule}
    )
    for route in routes:
        response = client.open(
            route, method=method, query_string=query, headers=auth, json={} if method == "POST" else None
        )

        assert response.status_code < 500, (route, query, response.get_json())
        if response.status_code == 400:
            assert response.get_json()["error"]["message"], (route, query)
        names = {name for name, _ in query}
        if names - {"page", "limit", "cursor", "tenant", "product_sku", "use_unity", "from", "to"}:
            assert response.status_code in (400, 401), (route, query)  # never ignored
