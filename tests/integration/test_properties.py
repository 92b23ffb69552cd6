"""Property tests against the real Redis and PostgreSQL (guarantees 3 and 6).

- Any list of valid amounts, in any hours, sums exactly through the real Lua script
  and the real flush: the persisted row equals the Decimal sum, to the micro-unit.
- Any junk (broken pulses, non-pulses, non-JSON bodies, deep nesting, huge strings,
  control characters) gets a clear rejection and changes no sum: through the API
  (4xx, or 202 with every pulse rejected and nothing enqueued) and through a
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

ROUND_TRIPS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@ROUND_TRIPS
@given(st.lists(st.tuples(amount_forms, past_timestamps(24 * 3)), min_size=1, max_size=40))
def test_any_valid_amounts_sum_exactly_through_redis_and_persist(app, database, entries) -> None:
    tenant = f"prop-{uuid.uuid4()}"
    ledger = Ledger()
    pulses = []
    for amount, timestamp in entries:
        pulses.append({"tenant": tenant, "product_sku": "sku", "use_unity": "u",
                       "used_amount": amount, "timestamp": timestamp.isoformat()})  # fmt: skip
        ledger.add(tenant, "sku", "u", timestamp.replace(minute=0, second=0, microsecond=0), Decimal(amount))
    services = app.extensions["pulses"]
    countable, rejected = services.validator.split(
        pulses, fallback_key=lambda index: keys.dedupe_key_for_position(tenant, index), received_at=entries[0][1]
    )
    assert rejected == []
    assert services.counter.count(countable) == len(pulses)
    services.persister.persist_pending()

    persisted = {group: sums for group, sums in persisted_sums(database).items() if group[0] == tenant}
    assert persisted == ledger.expected()


junk_pulse_lists = st.lists(st.one_of(broken_pulses().map(lambda case: case[0]), not_pulses), min_size=1, max_size=5)


@ROUND_TRIPS
@given(st.one_of(junk_bodies, junk_pulse_lists.map(lambda pulses: json.dumps(pulses, default=str).encode())))
def test_junk_posted_to_the_api_is_rejected_clearly_and_enqueues_nothing(client, auth, settings, body) -> None:
    response = client.post("/api/v1/pulses", data=body, content_type="application/json", headers=auth)

    answer = response.get_json()
    if response.status_code == 202:
        assert answer["accepted"] == 0 and answer["task_id"] is None
        sent = json.loads(body)
        assert [r["index"] for r in answer["rejected"]] == list(range(len(sent) if isinstance(sent, list) else 1))
        assert all(r["errors"] for r in answer["rejected"])
    else:
        assert response.status_code in (400, 413), answer
        assert answer["error"]["message"]
    assert queue_depth(settings.broker_url, "pulses") == 0


@ROUND_TRIPS
@given(junk_pulse_lists)
def test_junk_pulses_in_a_batch_are_quarantined_and_count_nothing(app, database, redis_client, pulses) -> None:
    message_id = str(uuid.uuid4())
    services = app.extensions["pulses"]
    report = ingest_batch(pulses, message_id=message_id, source="property", validator=services.validator,
                          counter=services.counter, database=database)  # fmt: skip

    assert (report.counted, report.rejected) == (0, len(pulses))
    assert redis_client.smembers(keys.PENDING_WINDOWS) == set()
    with database.engine.connect() as connection:
        positions = connection.execute(
            text("SELECT position FROM rejected_pulse WHERE message_id = :id ORDER BY position"), {"id": message_id}
        ).scalars().all()
    assert positions == list(range(len(pulses)))
