"""Helpers of the fault-injection tests: waiting on conditions, reading Redis windows,
persisting through a real worker, and the proxies that stand between a process and
the machine's services (see `tests/support/proxy.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import datetime

from celery import Celery
from redis import Redis

from ingestor.messaging.topology import PERSIST, PULSES
from ingestor.pulses.task_names import PERSIST_PULSES
from ingestor.settings import Settings
from tests.support.proxy import TcpProxy
from tests.support.windows import live_fields
from tests.support.worker import WorkerProcess, wait_until_idle

TASK_QUEUES = (PULSES, PERSIST)
# What Celery logs when a task hit a transient error and was scheduled again.
RETRY_LOG_LINE = "retry: Retry in"


def wait_for(condition: Callable[[], object], timeout: float = 30, what: str = "condition") -> None:
    """Poll `condition` until it is true; TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout}s")
        time.sleep(0.02)


def counted_pulses(redis_client: Redis, hour: datetime) -> int:
    """How many pulses the live window buckets of `hour` have counted so far."""
    window = live_fields(redis_client, hour)
    return sum(int(value) for field, value in window.items() if field.startswith(b"n|"))


def retries_logged(worker: WorkerProcess) -> int:
    """How many times `worker` logged a task retried after a transient error."""
    return worker.log.read_text(errors="replace").count(RETRY_LOG_LINE)


def persist_through_worker(control: Celery, worker: WorkerProcess, timeout: float = 90) -> None:
    """Let `worker` finish its queues, send it the persist task, wait until it ran."""
    wait_until_idle(control, worker, TASK_QUEUES, timeout)
    control.send_task(PERSIST_PULSES, exchange=PERSIST, routing_key=PERSIST)
    wait_until_idle(control, worker, TASK_QUEUES, timeout)


@dataclass
class Proxies:
    """One proxy per service, and the settings that send a process through them."""

    database: TcpProxy
    redis: TcpProxy
    broker: TcpProxy
    settings: Settings

    def all(self) -> tuple[TcpProxy, TcpProxy, TcpProxy]:
        return (self.database, self.redis, self.broker)


@contextmanager
def proxied(settings: Settings, **overrides: object) -> Iterator[Proxies]:
    """Proxies to the PostgreSQL, Redis and RabbitMQ of `settings`, closed on exit.

    The yielded settings point at the proxies (same database, db number and vhost),
    with `overrides` applied on top.
    """
    with ExitStack() as stack:
        database = stack.enter_context(TcpProxy.for_url(settings.database_url, 5432))
        redis = stack.enter_context(TcpProxy.for_url(settings.redis_url, 6379))
        broker = stack.enter_context(TcpProxy.for_url(settings.broker_url, 5672))
        through = replace(
            settings,
            database_url=database.url(settings.database_url),
            redis_url=redis.url(settings.redis_url),
            broker_url=broker.url(settings.broker_url),
            **overrides,
        )
        yield Proxies(database, redis, broker, through)
