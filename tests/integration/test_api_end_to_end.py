"""Through the API and a real worker: POST pulses → worker → persist → GET shows exact sums."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from ingestor.pulses.task_names import PERSIST_PULSES
from tests.support.ledger import Ledger
from tests.support.pulses import pulse
from tests.support.worker import wait_until_idle

QUEUES = ("pulses", "persist", "populate")


def persist(producer, worker):
    wait_until_idle(producer, worker, QUEUES)
    producer.send_task(PERSIST_PULSES, exchange="persist", routing_key="persist")
    wait_until_idle(producer, worker, QUEUES)


def all_sums(client, auth) -> dict:
    sums, url = {}, "/api/v1/pulses?limit=1000"
    while url:
        body = client.get(url, headers=auth).get_json()
        for item in body["items"]:
            key = (
                item["tenant"],
                item["product_sku"],
                item["use_unity"],
                datetime.fromisoformat(item["window_start"]),
            )
            sums[key] = (Decimal(item["used_amount"]), item["pulse_count"])
        url = body["next_cursor"] and f"/api/v1/pulses?limit=1000&cursor={body['next_cursor']}"
    return sums


def test_pulses_posted_over_http_come_back_as_exact_sums(client, auth, producer, worker):
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    ledger = Ledger()
    batch = []
    for n in range(300):
        amount = f"{n % 13}.{(n * 7919) % 10**6:06d}"
        tenant, minute = f"tenant:{n % 4}", hour + timedelta(minutes=n % 60)
        batch.append(
            pulse(id=f"http-{n}", tenant=tenant, product_sku="vm", used_amount=amount, timestamp=minute)
        )
        ledger.add(tenant, "vm", "vCPU-hour", hour, amount)
    batch.append(pulse(used_amount="-3"))

    first = client.post("/api/v1/pulses", json=batch, headers=auth).get_json()
    # The client retries the whole request (say, after a timeout): ids make it harmless.
    retry = client.post("/api/v1/pulses", json=batch, headers=auth).get_json()
    persist(producer, worker)

    assert first["accepted"] == retry["accepted"] == 300
    assert all_sums(client, auth) == ledger.expected()


def test_populate_publishes_every_fake_pulse_once(client, auth, producer, worker):
    job = client.post(
        "/api/v1/pulses/populate",
        json={"total_messages": 250, "workers_number": 3, "buffer_size": 40},
        headers=auth,
    ).get_json()
    deadline = time.monotonic() + 60
    while not (progress := client.get(f"/api/v1/pulses/populate/{job['job_id']}", headers=auth).get_json())[
        "done"
    ]:
        assert time.monotonic() < deadline, progress
        time.sleep(0.2)
    persist(producer, worker)

    assert progress["published"] == 250
    assert sum(count for _, count in all_sums(client, auth).values()) == 250
