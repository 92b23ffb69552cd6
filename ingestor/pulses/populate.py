"""Populate jobs: fake pulses published by Celery tasks, with progress kept in Redis.

A job of `total` pulses is split among `workers` tasks; each publishes its share in
batches of `buffer_size` and records how many it has published (an absolute number,
so a redelivered task overwrites rather than adds).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from celery import Celery
from redis import Redis

from ingestor.pulses.fake import fake_pulses
from ingestor.pulses.keys import PREFIX
from ingestor.pulses.publishing import publish_pulse_batch
from ingestor.redis_store import text_of

JOB_TTL_SECONDS = 7 * 24 * 3600


def job_key(job_id: str) -> str:
    return f"{PREFIX}populate:{job_id}"


@dataclass(frozen=True)
class PopulateProgress:
    """How far a populate job has got."""

    job_id: str
    total: int
    published: int
    workers: int
    buffer_size: int
    created_at: str

    @property
    def done(self) -> bool:
        return self.published >= self.total


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` split into `parts` shares differing by at most one, larger first."""
    base, extra = divmod(total, parts)
    return [base + (1 if index < extra else 0) for index in range(parts)]


def create_job(redis: Redis, total: int, workers: int, buffer_size: int) -> str:
    """Record a new job; its id."""
    job_id = str(uuid.uuid4())
    key = job_key(job_id)
    with redis.pipeline(transaction=True) as pipe:
        pipe.hset(
            key,
            mapping={
                "total": total,
                "workers": workers,
                "buffer_size": buffer_size,
                "created_at": datetime.now(UTC).isoformat(),
            },
        )
        pipe.expire(key, JOB_TTL_SECONDS)
        pipe.execute()
    return job_id


def job_progress(redis: Redis, job_id: str) -> PopulateProgress | None:
    """The progress of job `job_id`, or None if there is no such job (or it expired)."""
    fields = {text_of(k): text_of(v) for k, v in redis.hgetall(job_key(job_id)).items()}
    if not fields:
        return None
    return PopulateProgress(
        job_id=job_id,
        total=int(fields["total"]),
        published=sum(int(v) for k, v in fields.items() if k.startswith("published:")),
        workers=int(fields["workers"]),
        buffer_size=int(fields["buffer_size"]),
        created_at=fields["created_at"],
    )


def publish_fake_pulses(
    celery_app: Celery,
    job_id: str,
    worker_index: int,
    count: int,
    buffer_size: int,
    on_batch: Callable[[int], None] = lambda published: None,
) -> int:
    """Publish `count` fake pulses in batches of `buffer_size`; `on_batch(published so far)`
    after each confirmed batch. Raises BrokerUnavailable; returns the pulses published."""
    published = 0
    while published < count:
        size = min(buffer_size, count - published)
        publish_pulse_batch(celery_app, fake_pulses(job_id, worker_index, published, size))
        published += size
        on_batch(published)
    return published


def run_share(
    celery_app: Celery, redis: Redis, job_id: str, worker_index: int, count: int, buffer_size: int
) -> int:
    """Publish one worker's share of a job, recording its progress in Redis."""

    def record(published: int) -> None:
        redis.hset(job_key(job_id), f"published:{worker_index}", published)

    return publish_fake_pulses(celery_app, job_id, worker_index, count, buffer_size, record)
