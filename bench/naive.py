"""The baseline the benchmark compares against: the naive per-pulse design.

One Celery task per pulse, late ack, one `HINCRBY` per task, no validation, no dedupe:
what the first version did, in Python. Run as `celery -A bench.naive worker`.
"""

from __future__ import annotations

import os

import redis
from celery import Celery

app = Celery("naive", broker=os.environ["BROKER_URL"])
app.conf.update(
    task_acks_late=True,
    task_ignore_result=True,
    task_default_queue="naive",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
_redis = redis.Redis.from_url(os.environ["REDIS_URL"])


@app.task(name="naive.ingest_pulse")
def ingest_pulse(pulse: dict) -> None:
    field = f"{pulse['tenant']}:{pulse['product_sku']}:{pulse['use_unity']}"
    _redis.hincrby("naive:window", field, int(pulse["used_amount"]))
