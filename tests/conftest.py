"""Fixtures: unit tests need nothing; integration tests get the real services.

Integration tests run against a database, a Redis db and a RabbitMQ vhost of their
own (see tests/support/services.py), rebuilt at the start of the session; each test
starts from empty tables, an empty Redis db and empty queues.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery
from flask import Flask
from kombu import Connection
from redis import Redis
from sqlalchemy import text

from ingestor import create_app
from ingestor.database import Database, upgrade_schema
from ingestor.messaging.topology import ALL_QUEUES, declare_topology
from ingestor.settings import Settings
from tests.support import services
from tests.support.worker import WorkerProcess

TABLES = ("pulse_usage", "flush_batch", "rejected_pulse")


@pytest.fixture(scope="session")
def settings() -> Settings:
    return services.settings_for_tests()


@pytest.fixture(scope="session")
def _services_ready(settings: Settings) -> None:
    services.recreate_database(settings.database_url)
    upgrade_schema(settings.database_url)
    services.recreate_vhost()
    with Connection(settings.broker_url) as connection:
        declare_topology(connection)


@pytest.fixture(scope="session")
def app(settings: Settings, _services_ready: None) -> Flask:
    return create_app(settings)


@pytest.fixture(scope="session")
def database(app: Flask) -> Database:
    return app.extensions["database"]


@pytest.fixture(scope="session")
def redis_client(app: Flask) -> Redis:
    return app.extensions["redis"]


@pytest.fixture(scope="session")
def producer(settings: Settings) -> Iterator[Celery]:
    """A Celery app that knows nothing of the project: what another service would have."""
    producer = services.external_producer(settings.broker_url)
    yield producer
    producer.close()


@pytest.fixture
def clean_state(settings: Settings, database: Database, redis_client: Redis) -> None:
    """Empty tables, Redis db and queues before the test."""
    redis_client.flushdb()
    with database.engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY"))
    with Connection(settings.broker_url) as connection:
        for queue in ALL_QUEUES:
            queue.bind(connection.default_channel).purge()


@pytest.fixture(scope="module")
def worker(settings: Settings, producer: Celery, _services_ready: None) -> Iterator[WorkerProcess]:
    """A real `celery -A ingestor worker` consuming the test vhost, for one test module.

    Per module, so a module that runs workers of its own has the queues to itself.
    """
    process = WorkerProcess(settings, "shared")
    process.start(producer)
    yield process
    process.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Everything under tests/integration needs the real services.
    for item in items:
        if "/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)
