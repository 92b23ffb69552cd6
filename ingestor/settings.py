"""The one typed settings object, read from environment variables (12-factor).

Every knob of the ingestor is here, with a default that points at services on
localhost, so a developer machine running PostgreSQL, Redis and RabbitMQ needs no
configuration. `.env.example` documents each variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, get_type_hints
from urllib.parse import unquote

from celery.schedules import crontab
from flask import Flask, current_app
from limits import parse_many

DEVELOPMENT = "development"
# Signs tokens in development only: validated() refuses it anywhere else.
DEVELOPMENT_JWT_SECRET = "development-only-insecure-jwt-secret-key"
MIN_JWT_SECRET_LENGTH = 32
LOG_FORMATS = ("json", "text")
# As ingestor.messaging.topology.QUEUE_TYPES (settings import nothing of the project).
BROKER_QUEUE_TYPES = ("classic", "quorum")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Integer settings for which 0 means "off" (every other one must be positive).
ZERO_MEANS_OFF = frozenset(
    {
        "metrics_port",
        "trusted_proxies",
        "user_lookup_grace_seconds",
        "user_cache_seconds",
        "redis_wait_replicas",
    }
)
# The longest USER_CACHE_SECONDS: how long a disabled or deleted user's tokens may keep
# working is an operator's promise, and past a few minutes "disabled" no longer means "now".
MAX_USER_CACHE_SECONDS = 300

# Variables a PaaS add-on sets, read when the ingestor's own variable is unset or
# empty, in this order. BROKER_URL/REDIS_URL always win: an operator who sets them
# means them. Not REDIS_TLS_URL: Heroku sets it only beside REDIS_URL, which wins.
FALLBACK_VARIABLES: dict[str, tuple[str, ...]] = {
    "BROKER_URL": ("CLOUDAMQP_URL", "RABBITMQ_URL"),
    "REDIS_URL": ("REDISCLOUD_URL",),
}


def _lookup(environ: Mapping[str, str], name: str) -> str | None:
    """The value of `name`, else of its first set fallback; None if none is set."""
    for candidate in (name, *FALLBACK_VARIABLES.get(name, ())):
        value = environ.get(candidate)
        if value:
            return value
    return None


class SettingsError(ValueError):
    """An environment variable holds a value the ingestor cannot use."""


def _parse(name: str, kind: type, raw: str) -> Any:
    """`raw`, the value of the variable for the setting `name`, as the setting's type."""
    if kind is str:
        return raw
    if kind is not int:
        raise TypeError(f"setting {name}: no parser for {kind!r}")
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name.upper()} must be an integer, got {raw!r}") from None
    if value <= 0 and not (value == 0 and name in ZERO_MEANS_OFF):
        raise SettingsError(f"{name.upper()} must be positive, got {raw!r}")
    return value


def normalize_database_url(url: str) -> str:
    """Return `url` with the psycopg2 driver named explicitly.

    PaaS hand out `postgres://...`, which SQLAlchemy refuses, and SQLAlchemy 2.1 maps a
    bare `postgresql://` to psycopg 3, which this project does not install.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise SettingsError(f"DATABASE_URL is not a URL: {url!r}")
    if scheme in ("postgres", "postgresql"):
        return f"postgresql+psycopg2://{rest}"
    if scheme != "postgresql+psycopg2":
        raise SettingsError(f"DATABASE_URL must be a PostgreSQL URL, got scheme {scheme!r}")
    return url


# REDIS_URL naming a Redis Cluster, as the `limits` library (the login limits) spells
# it: `redis+cluster://[user:password@]host:port[,host:port...]`, TLS with `rediss+`.
REDIS_CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


@dataclass(frozen=True)
class RedisClusterAddress:
    """Where a Redis Cluster is: the nodes to discover it from, and how to log in."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    ssl: bool


def parse_redis_cluster_url(url: str) -> RedisClusterAddress | None:
    """The cluster a `redis+cluster://` REDIS_URL names; None for any other URL (a
    single Redis, left to redis-py); SettingsError for a cluster URL it cannot use."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in REDIS_CLUSTER_SCHEMES:
        return None
    shape = "redis+cluster://[user:password@]host:port[,host:port...]"
    credentials, at, locations = rest.rpartition("@")
    locations, _, path = locations.partition("/")
    if "?" in locations or "?" in path or path not in ("", "0"):
        # A cluster has database 0 only; options go in the other variables.
        raise SettingsError(f"REDIS_URL of a cluster takes no database nor options: {shape}, got {url!r}")
    nodes: list[tuple[str, int]] = []
    for location in locations.split(","):
        host, colon, port = location.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise SettingsError(
                f"REDIS_URL of a cluster must list host:port nodes ({shape}), got {location!r}"
            )
        nodes.append((host.strip("[]"), int(port)))
    username, _, password = credentials.partition(":") if at else ("", "", "")
    return RedisClusterAddress(
        nodes=tuple(nodes),
        username=unquote(username) or None,
        password=unquote(password) or None,
        ssl=scheme == "rediss+cluster",
    )


@dataclass(frozen=True)
class Settings:
    """Runtime configuration of the web, worker and beat processes."""

    database_url: str = "postgresql+psycopg2://postgres@127.0.0.1:5432/pulse_ingestor"
    # Several RabbitMQ nodes, separated by ";" (amqp://a//;amqp://b//): kombu fails
    # over to the next one when a node is unreachable.
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    # The type of the Celery task queues (pulses, persist, populate): "classic", for a
    # single RabbitMQ node (quorum replication buys nothing there and costs throughput),
    # or "quorum", replicated across a RabbitMQ cluster (see messaging/topology.py).
    broker_queue_type: str = "classic"
    # A single Redis (redis://, rediss://, unix://), or a Redis Cluster:
    # redis+cluster://host:port,host:port (parse_redis_cluster_url).
    redis_url: str = "redis://127.0.0.1:6379/0"
    # A host that drops packets (a firewall, a dead machine) answers nothing and resets
    # nothing: without these the client waits for the OS TCP timeout, minutes, and so
    # does every request or task using it. With them an outage is a 503 or a retry.
    # PostgreSQL: libpq's connect_timeout, the whole connection setup (TCP, startup, login).
    database_connect_timeout_seconds: int = 5
    # Redis: opening a connection...
    redis_connect_timeout_seconds: int = 5
    # ...and waiting for any one reply. Longer than any legitimate call: an ingest or
    # flush script runs one chunk (REDIS_CHUNK_SIZE), and Redis itself answers BUSY to
    # everyone else once a script passes 5 s (busy-reply-threshold), so 20 s is four
    # times what Redis already treats as an incident; and shorter than gunicorn's 30 s
    # worker timeout, so the web answers 503 before gunicorn kills the request.
    redis_socket_timeout_seconds: int = 20
    # Durability on a failover: after each ingest script call, WAIT until this many
    # replicas of its master have the write (0: don't wait, as a single Redis without
    # replicas needs), for at most REDIS_WAIT_TIMEOUT_MS; fewer is a retry, never an ack.
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 1000
    # "development" allows the built-in insecure JWT key; anything else requires a
    # strong JWT_SECRET_KEY, and refuses to start without one.
    app_env: str = "development"
    jwt_secret_key: str = ""
    jwt_expires_seconds: int = 3600
    # POST /api/v1/login attempts (any outcome), per username and per client address,
    # counted in Redis (shared by every web worker and replica). Flask-Limiter's
    # notation: "10/minute;100/hour" is both limits at once.
    login_rate_limit_per_username: str = "10/minute;100/hour"
    login_rate_limit_per_address: str = "30/minute;300/hour"
    # Reverse proxies in front of the web (a PaaS router, a load balancer) whose
    # X-Forwarded-For is trusted for the client address; 0: the peer address is the client.
    trusted_proxies: int = 0
    # A token's user is looked up at most every USER_CACHE_SECONDS; while PostgreSQL is
    # unreachable, a user found active at most this long ago is still taken as active (0: never).
    user_lookup_grace_seconds: int = 300
    # A web process takes a token's user found active in PostgreSQL at most this long ago
    # as still active without asking again (0: asked on every request). The price: a user
    # disabled or deleted keeps working for up to this long (at most MAX_USER_CACHE_SECONDS).
    user_cache_seconds: int = 5
    # POST /api/v1/pulses: pulses per request and request body size.
    max_pulses_per_request: int = 1000
    max_body_bytes: int = 2 * 1024 * 1024
    # Cron syntax, evaluated in UTC: minute hour day-of-month month day-of-week.
    persist_schedule: str = "0 * * * *"
    # How long a pulse id is remembered: a redelivery within it counts once.
    dedupe_horizon_seconds: int = 24 * 3600
    # Pulses older than this (by their timestamp) are rejected: the hour is closed.
    late_limit_seconds: int = 35 * 24 * 3600
    # Pulses further than this in the future are rejected: a producer clock is wrong.
    future_limit_seconds: int = 5 * 60
    # Pulses per Lua call: bounds how long one call holds Redis.
    redis_chunk_size: int = 5000
    # A flushed snapshot stays readable in Redis this long after its commit, so a
    # pending-usage read whose PostgreSQL snapshot predates the commit still finds it
    # (pulses/pending.py); a read slower than half of it is refused.
    pending_read_grace_seconds: int = 300
    # Transient failures (PostgreSQL, Redis, RabbitMQ outages: ingestor.outages) are
    # retried with exponential backoff up to this many times, then the message goes
    # to the dead-letter queue.
    task_max_retries: int = 20
    task_retry_backoff_max_seconds: int = 300
    # Redis memory: a WARNING (and the ingestor_redis_memory_low gauge) once used
    # memory reaches this percent of maxmemory, before Redis starts refusing writes...
    redis_memory_warn_percent: int = 80
    # ...checked at most this often per process (INFO memory, off the per-batch path).
    redis_memory_check_seconds: int = 10
    # The raw pulse queue: bare JSON pulses (no Celery envelope) from the first
    # version's producers, consumed in batches by the worker (pulses/raw_consumer.py).
    raw_queue: str = "pulses.raw"
    # A batch is counted (one Lua call) and acked once it holds this many pulses...
    raw_batch_size: int = 500
    # ...or once its oldest message has waited this long, so a trickle is not held back.
    raw_batch_wait_ms: int = 50
    # Larger message bodies are dead-lettered unread.
    raw_max_body_bytes: int = 1024 * 1024
    # Logs: "json" (one JSON object per line, for a log pipeline) or "text" (for a
    # terminal). Empty: json, except text when APP_ENV is development.
    log_format: str = ""
    log_level: str = "INFO"
    # Prometheus: when set, GET /metrics requires `Authorization: Bearer <token>`.
    metrics_token: str = ""
    # The worker's metrics endpoint (its main process serves every pool process's
    # metrics); port 0 turns it off. See ingestor/observability/metrics.py.
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `environ` (default: `os.environ`); bad values raise."""
        environ = os.environ if environ is None else environ
        # The real types, not the annotation strings `from __future__ import annotations` leaves.
        kinds = get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = _lookup(environ, field.name.upper())
            if raw is not None:
                values[field.name] = _parse(field.name, kinds[field.name], raw)
        return cls(**values).validated()

    def validated(self) -> Settings:
        """These settings with their derived defaults filled in, once checked.

        A new instance (the dataclass is frozen): the database URL with its driver, the
        log format for the environment, the log level in capitals, the development JWT key.
        Raises SettingsError for values that can be wrong in ways a type cannot express.
        """
        development = self.app_env == DEVELOPMENT
        settings = replace(
            self,
            database_url=normalize_database_url(self.database_url),
            log_format=self.log_format or ("text" if development else "json"),
            log_level=self.log_level.upper(),
            jwt_secret_key=self.jwt_secret_key or (DEVELOPMENT_JWT_SECRET if development else ""),
        )
        settings._check()
        return settings

    def _check(self) -> None:
        self.persist_crontab()
        if self.log_format not in LOG_FORMATS:
            raise SettingsError(
                f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}"
            )
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        parse_redis_cluster_url(self.redis_url)
        if not 1 <= self.redis_memory_warn_percent <= 100:
            raise SettingsError(
                "REDIS_MEMORY_WARN_PERCENT must be a percent of maxmemory (1-100), "
                f"got {self.redis_memory_warn_percent}"
            )
        for name in ("login_rate_limit_per_username", "login_rate_limit_per_address"):
            try:
                parse_many(getattr(self, name))
            except ValueError:
                raise SettingsError(
                    f"{name.upper()} must be rate limits like '10/minute;100/hour', got {getattr(self, name)!r}"
                ) from None
        if self.user_cache_seconds > MAX_USER_CACHE_SECONDS:
            raise SettingsError(
                f"USER_CACHE_SECONDS must be at most {MAX_USER_CACHE_SECONDS} (0: off), got {self.user_cache_seconds}:"
                " a disabled or deleted user's tokens keep working for that long"
            )
        if self.broker_queue_type not in BROKER_QUEUE_TYPES:
            raise SettingsError(
                f"BROKER_QUEUE_TYPE must be one of {', '.join(BROKER_QUEUE_TYPES)}, got {self.broker_queue_type!r}"
            )
        if not 0 <= self.metrics_port <= 65535:
            raise SettingsError(f"METRICS_PORT must be a TCP port (0: off), got {self.metrics_port}")
        if self.app_env != DEVELOPMENT and (
            len(self.jwt_secret_key) < MIN_JWT_SECRET_LENGTH or self.jwt_secret_key == DEVELOPMENT_JWT_SECRET
        ):
            raise SettingsError(
                f"JWT_SECRET_KEY must be set to a random string of at least {MIN_JWT_SECRET_LENGTH} "
                f"characters when APP_ENV is {self.app_env!r} (only 'development' runs without one)"
            )

    def persist_crontab(self) -> crontab:
        """The persist schedule as a Celery crontab."""
        try:
            return crontab.from_string(self.persist_schedule)
        except (ValueError, TypeError) as exc:
            raise SettingsError(
                f"PERSIST_SCHEDULE must be a cron expression like '0 * * * *': {exc}"
            ) from None


# Where create_app() keeps the app's Settings; read it through settings_of/get_settings.
CONFIG_KEY = "SETTINGS"


def settings_of(app: Flask) -> Settings:
    """The settings `app` was built with."""
    return app.config[CONFIG_KEY]


def get_settings() -> Settings:
    """The settings of the current Flask app (inside an app context: a request, a task, a command)."""
    return settings_of(current_app)
