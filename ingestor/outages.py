"""The errors that mean a service is out for a while, per service: one list for all.

What the PostgreSQL, Redis and RabbitMQ clients raise when their service is
unreachable, refuses connections (a database that does not exist) or answers too
late. The tasks retry these with backoff (`ingestor.pulses.tasks`), the raw consumer
holds its batch on them, and the API answers them with a 503 naming the service
(`ingestor.api.errors`). Not every error of a client: a Redis script error or an SQL
syntax error is a bug, never retried, answered 500 and logged.

Plumbing: this module knows no domain, so any package may import it.
"""

from __future__ import annotations

import kombu.exceptions
import psycopg2
import redis.exceptions
import sqlalchemy.exc

POSTGRESQL = "postgresql"
REDIS = "redis"
RABBITMQ = "rabbitmq"
SERVICE_NAMES = {POSTGRESQL: "PostgreSQL", REDIS: "Redis", RABBITMQ: "RabbitMQ"}

ErrorTypes = tuple[type[BaseException], ...]


class BrokerUnavailable(Exception):
    """RabbitMQ did not confirm the message: it may not be stored; publish again."""


OUTAGE_ERRORS: dict[str, ErrorTypes] = {
    POSTGRESQL: (
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.InterfaceError,
        sqlalchemy.exc.TimeoutError,  # no pooled connection came free
        # The same from psycopg2 itself: the flush's COPY runs on the driver's cursor,
        # outside SQLAlchemy (a canceled statement, a deadlock, a dropped connection).
        psycopg2.OperationalError,
        psycopg2.InterfaceError,
    ),
    REDIS: (
        redis.exceptions.ConnectionError,  # BusyLoadingError (a restart loading its file) is one
        redis.exceptions.TimeoutError,
        redis.exceptions.ReadOnlyError,  # a replica, or a failover under way
        # A Redis Cluster mid-failover: a slot without a master yet, or moved to the
        # replica promoted (ReplicaWaitTimeout, a replica not confirming a write in
        # time, is a TimeoutError).
        redis.exceptions.ClusterError,  # ClusterDownError, MasterDownError are ones
        redis.exceptions.TryAgainError,
        redis.exceptions.AskError,  # and MovedError: a slot moved or moving (resharding)
        redis.exceptions.SlotNotCoveredError,
    ),
    RABBITMQ: (BrokerUnavailable, kombu.exceptions.OperationalError),
}

# Redis refusing a write because it reached maxmemory: not an outage (Redis answers,
# and reads still work), a capacity incident lasting until an operator acts. The tasks
# and the raw consumer hold and retry what it refused; the API answers it 503 naming
# Redis (ingestor.api.errors).
REDIS_FULL_ERRORS: ErrorTypes = (redis.exceptions.OutOfMemoryError,)


def errors_of(*services: str) -> ErrorTypes:
    """The outage errors of `services`, as one tuple for an `except` clause."""
    return tuple(error for service in services for error in OUTAGE_ERRORS[service])


# What a worker (a task, the raw consumer's batch) retries with backoff: every outage,
# and Redis full, held first. Safe because every step is idempotent: a retry never
# counts twice.
TRANSIENT_ERRORS: ErrorTypes = (*errors_of(POSTGRESQL, REDIS, RABBITMQ), *REDIS_FULL_ERRORS)
