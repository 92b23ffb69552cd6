"""Test-owned corners of the machine's services: a database, a Redis db, a vhost.

The tests never touch the services' real data and never stop them: PostgreSQL gets
a database of its own (rebuilt by `alembic upgrade head` each session), Redis a db
number, RabbitMQ a virtual host (so the queue names stay the real contract).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from urllib.parse import quote

from celery import Celery
from kombu import Connection
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ingestor.settings import Settings

DATABASE_URL = os.environ.get(
    "TEST_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/pulse_ingestor_test"
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
RABBITMQ_VHOST = os.environ.get("TEST_RABBITMQ_VHOST", "pulse_ingestor_test")
BROKER_URL = f"amqp://guest:guest@127.0.0.1:5672/{quote(RABBITMQ_VHOST, safe='')}"


def settings_for_tests(**overrides: object) -> Settings:
    """Settings pointing at the test database, Redis db and vhost; no user cache (a test
    that disables a user sees it refused on the next request), unless overridden."""
    values: dict[str, object] = {
        "database_url": DATABASE_URL,
        "redis_url": REDIS_URL,
        "broker_url": BROKER_URL,
        "user_cache_seconds": 0,
    }
    values.update(overrides)
    return Settings(**values).validated()  # type: ignore[arg-type]


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment variables that make a subprocess use `settings`."""
    return {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "BROKER_URL": settings.broker_url,
        "BROKER_QUEUE_TYPE": settings.broker_queue_type,
        "DEDUPE_HORIZON_SECONDS": str(settings.dedupe_horizon_seconds),
        "REDIS_CHUNK_SIZE": str(settings.redis_chunk_size),
        "REDIS_WAIT_REPLICAS": str(settings.redis_wait_replicas),
        "REDIS_WAIT_TIMEOUT_MS": str(settings.redis_wait_timeout_ms),
        "RAW_QUEUE": settings.raw_queue,
        "RAW_BATCH_SIZE": str(settings.raw_batch_size),
        "RAW_BATCH_WAIT_MS": str(settings.raw_batch_wait_ms),
        "RAW_MAX_BODY_BYTES": str(settings.raw_max_body_bytes),
        "TASK_MAX_RETRIES": str(settings.task_max_retries),
        "TASK_RETRY_BACKOFF_MAX_SECONDS": str(settings.task_retry_backoff_max_seconds),
        "REDIS_MEMORY_WARN_PERCENT": str(settings.redis_memory_warn_percent),
        "REDIS_MEMORY_CHECK_SECONDS": str(settings.redis_memory_check_seconds),
        "USER_CACHE_SECONDS": str(settings.user_cache_seconds),
    }


def recreate_database(url: str) -> None:
    """Drop and create the test database, so its schema comes from Alembic alone."""
    target = make_url(url)
    engine = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{target.database}"'))
    engine.dispose()


def recreate_vhost(vhost: str = RABBITMQ_VHOST) -> str:
    """A fresh RabbitMQ virtual host (default: the tests'), guest allowed in; its URL."""
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    subprocess.run([ctl, "-q", "delete_vhost", vhost], capture_output=True, check=False)
    subprocess.run([ctl, "-q", "add_vhost", vhost], capture_output=True, check=True)
    subprocess.run(
        [ctl, "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        capture_output=True,
        check=True,
    )
    broker_url = f"amqp://guest:guest@127.0.0.1:5672/{quote(vhost, safe='')}"
    with Connection(broker_url) as connection:
        connection.ensure_connection(max_retries=3)
    return broker_url


def rabbitmqctl_rows(command: str, vhost: str, *columns: str, options: Sequence[str] = ()) -> list[list[str]]:
    """The rows `rabbitmqctl <options> <command> -p <vhost> <columns...>` prints, split
    into columns; `options` (`-n <node>`, `--erlang-cookie`) ask another node than the
    machine's."""
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    listing = subprocess.run(
        [ctl, *options, "-q", command, "-p", vhost, "--no-table-headers", *columns],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split("\t") for line in listing.splitlines()]


def external_producer(broker_url: str) -> Celery:
    """A Celery app that knows nothing of the project (what another service would have).

    Publishes with confirms, as every producer of pulses should. The caller closes it.
    """
    producer = Celery("producer", broker=broker_url, set_as_current=False)
    producer.conf.broker_transport_options = {"confirm_publish": True}
    return producer
