"""The Redis client of the process, where pulses are summed between flushes.

Also what the rest of the ingestor knows about Redis running out of memory: with the
`noeviction` policy the README asks for, a full Redis refuses every command that
could grow its memory (`-OOM command not allowed when used memory > 'maxmemory'`),
the ingest script included. `read_memory` reads the figures Redis decides on, and
`is_out_of_memory` recognizes the refusal in either of its forms.

REDIS_URL may name a Redis Cluster (`redis+cluster://host:port,host:port`, see
settings.parse_redis_cluster_url): the client is then redis-py's `RedisCluster`,
which offers every command the ingestor sends (each Lua call and transaction touches
keys of one hash slot, keys.py). What concerns the servers rather than keys (the
start-up settings check, INFO memory) is asked of every node (`nodes_of`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app
from redis import ConnectionPool, Redis, RedisCluster
from redis.cluster import ClusterNode
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ingestor.settings import parse_redis_cluster_url, settings_of

# Redis's own wording, in the OOM reply to a command and, on Redis before 7, inside the
# "ERR Error running script" reply a script gets when a command it calls is refused.
OOM_REPLY_TEXT = "command not allowed when used memory > 'maxmemory'"


class RedisSettingsError(RuntimeError):
    """The Redis the ingestor writes to is set up in a way that loses or double-counts."""


# Redis's default `set-max-intset-entries`, assumed where CONFIG cannot be read.
DEFAULT_SET_ENTRIES = 512
# Below this, the dedupe id index (pulses/aggregation.py: sets of integers kept under
# the limit, so intsets) would spend more on keys than on ids.
MIN_SET_ENTRIES = 64


def _config_value(redis: Redis, name: str) -> str | None:
    """A CONFIG GET value as text; None when absent or CONFIG is refused (renamed away)."""
    try:
        value = redis.config_get(name).get(name)
    except ResponseError:
        return None
    return value.decode() if isinstance(value, bytes) else value


def set_intset_entries(redis: Redis) -> int:
    """Redis's `set-max-intset-entries`, or its default when CONFIG is unavailable."""
    value = _config_value(redis, "set-max-intset-entries")
    return int(value) if value else DEFAULT_SET_ENTRIES


def check_redis_settings(redis: Redis) -> None:
    """Refuse to start on a Redis set up against the dedupe design.

    Redis 7.0 or later. `maxmemory-policy` must be `noeviction`: an evicted dedupe record or message ledger
    is a pulse counted twice, an evicted window revenue lost. `set-max-intset-entries`
    ≥ 64: the id index keeps its ids in sets of integers below that size, intsets
    (12 bytes an id; a hashtable costs several times more). A
    Redis whose CONFIG command is renamed away (some managed services) cannot be
    checked: that is the operator's to ensure, as the README says. On a cluster, every
    node, replicas too: a replica is a master after a failover.
    """
    if not isinstance(redis, RedisCluster):
        _check_node_settings(redis)
        return
    for primary in nodes_of(redis):
        _check_cluster_node_settings(primary)
        for replica in _replicas_of(primary):
            try:
                _check_cluster_node_settings(replica)
            finally:
                replica.close()


def _check_cluster_node_settings(node: Redis) -> None:
    try:
        _check_node_settings(node)
    except RedisSettingsError as exc:
        options = node.connection_pool.connection_kwargs
        raise RedisSettingsError(f"cluster node {options.get('host')}:{options.get('port')}: {exc}") from None


def _replicas_of(primary: Redis) -> list[Redis]:
    """Clients of the replicas a master lists in INFO replication, with its options
    (redis-py's cluster client knows no replicas unless it reads from them)."""
    pool = primary.connection_pool
    replicas = []
    for name, value in primary.info("replication").items():
        if name.startswith("slave") and isinstance(value, dict) and "port" in value:
            options = {**pool.connection_kwargs, "host": value["ip"], "port": int(value["port"])}
            replicas.append(
                Redis(connection_pool=ConnectionPool(connection_class=pool.connection_class, **options))
            )
    return replicas


def _check_node_settings(redis: Redis) -> None:
    version = str(redis.info("server").get("redis_version", "0"))
    if tuple(int(part) for part in version.split(".")[:2] if part.isdigit()) < (7, 0):
        raise RedisSettingsError(
            f"Redis is version {version}: the ingestor needs 7.0 or later (its ingest script reads "
            "TIME before writing, and its id index asks SMISMEMBER)"
        )
    policy = _config_value(redis, "maxmemory-policy")
    if policy not in (None, "noeviction"):
        raise RedisSettingsError(
            f"Redis maxmemory-policy is {policy!r}: the ingestor needs 'noeviction' (an evicted "
            "dedupe key is a pulse counted twice); run CONFIG SET maxmemory-policy noeviction "
            "and set it in redis.conf"
        )
    name = "set-max-intset-entries"
    value = _config_value(redis, name)
    if value is not None and int(value) < MIN_SET_ENTRIES:
        raise RedisSettingsError(
            f"Redis {name} is {value}: the ingestor needs at least {MIN_SET_ENTRIES} (its dedupe "
            "index of ids keeps small sets of integers intset-encoded, 12 bytes an id); "
            f"run CONFIG SET {name} {MIN_SET_ENTRIES} or more and set it in redis.conf"
        )


def init_app(app: Flask) -> None:
    """Attach a Redis client built from the app's settings (a RedisCluster for a cluster URL)."""
    settings = settings_of(app)
    options: dict[str, Any] = {
        # Pooled connections idle for an hour are checked first.
        "health_check_interval": 30,
        # A Redis that drops packets raises TimeoutError (an outage: a 503, a task
        # retry) instead of holding the caller for the OS TCP timeout. Set here, not
        # left to redis-py's defaults: its 5 s read timeout would cut a long flush script.
        "socket_connect_timeout": settings.redis_connect_timeout_seconds,
        "socket_timeout": settings.redis_socket_timeout_seconds,
    }
    cluster = parse_redis_cluster_url(settings.redis_url)
    if cluster is None:
        app.extensions["redis"] = Redis.from_url(settings.redis_url, **options)
        return
    # Typed as Redis for the callers: RedisCluster has every command they send.
    app.extensions["redis"] = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster.nodes],
        username=cluster.username,
        password=cluster.password,
        ssl=cluster.ssl,
        **options,
    )


def get_redis() -> Redis:
    """The Redis client of the current app (a `RedisCluster` on a cluster)."""
    return current_app.extensions["redis"]


class ReplicaWaitTimeout(RedisTimeoutError):
    """Fewer replicas than asked confirmed a write in time: it may be lost on a
    failover, so the batch is retried (idempotent), never acked on it."""


def node_for_key(redis: Redis, key: str | bytes) -> Redis:
    """A client of the server holding `key`: `redis` itself on a single node; on a
    cluster, its slot's master as the client last saw it (for WAIT after a write, which
    must follow the write on one connection)."""
    if not isinstance(redis, RedisCluster):
        return redis
    return redis.get_redis_connection(redis.get_node_from_key(key))


def refresh_topology(redis: Redis) -> None:
    """Read a cluster's slots again (after a MOVED or a dead master); nothing on one node."""
    if isinstance(redis, RedisCluster):
        redis.nodes_manager.initialize()


def is_cluster(redis: object) -> bool:
    """Whether `redis` is a Redis Cluster client."""
    return isinstance(redis, RedisCluster)


def nodes_of(redis: Redis) -> list[Redis]:
    """A client of each master behind `redis`: itself on a single node; on a cluster,
    each master as the client last saw them."""
    if not isinstance(redis, RedisCluster):
        return [redis]
    return [redis.get_redis_connection(node) for node in redis.get_primaries()]


def text_of(reply: bytes | str) -> str:
    """A reply of the app's client as text: it returns bytes (no decode_responses), so
    binary dedupe keys and hash fields read back as they were written."""
    return reply.decode() if isinstance(reply, bytes) else reply


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is Redis refusing a write because it reached `maxmemory`."""
    return isinstance(exc, OutOfMemoryError) or (
        isinstance(exc, ResponseError) and OOM_REPLY_TEXT in str(exc)
    )


@dataclass(frozen=True)
class MemoryUsage:
    """Redis memory as its eviction logic sees it (INFO memory)."""

    # used_memory minus what Redis leaves out of the maxmemory check (replica and
    # AOF buffers): the number Redis compares with maxmemory before refusing a write.
    used_bytes: int
    # 0: no limit (Redis then grows until the machine runs out).
    maxmemory_bytes: int

    @classmethod
    def from_info(cls, info: dict) -> MemoryUsage:
        used = int(info["used_memory"]) - int(info.get("mem_not_counted_for_evict", 0))
        return cls(used_bytes=max(used, 0), maxmemory_bytes=int(info.get("maxmemory", 0)))

    @property
    def used_ratio(self) -> float | None:
        """used / maxmemory; None without a limit."""
        return self.used_bytes / self.maxmemory_bytes if self.maxmemory_bytes else None

    @property
    def full(self) -> bool:
        """Whether Redis refuses writes now (it does once used exceeds maxmemory)."""
        return bool(self.maxmemory_bytes) and self.used_bytes > self.maxmemory_bytes

    def describe(self) -> str:
        """`used X MiB of maxmemory Y MiB (Z%)`, for log lines."""
        used = f"used {self.used_bytes / 2**20:.1f} MiB"
        if not self.maxmemory_bytes:
            return f"{used}, no maxmemory"
        return f"{used} of maxmemory {self.maxmemory_bytes / 2**20:.1f} MiB ({100 * (self.used_ratio or 0):.0f}%)"


def read_memory(redis: Redis) -> MemoryUsage:
    """Redis's memory figures now (one INFO memory call; raises RedisError when unreachable).

    On a cluster, those of the master nearest its maxmemory (a full one first): one full
    master refuses the pulses of its slots, a third of every batch.
    """
    usages = [MemoryUsage.from_info(node.info("memory")) for node in nodes_of(redis)]
    return max(usages, key=lambda usage: (usage.full, usage.used_ratio or 0.0))


def wait_for_room(redis: Redis, seconds: float, poll_seconds: float) -> bool:
    """Sleep up to `seconds`, polling INFO memory; True as soon as Redis has room again.

    Always sleeps one poll first: right after a refusal Redis may read just below
    maxmemory (a client buffer freed), and the next write would be refused again.
    False when the time is up or Redis stopped answering (the retry will meet that).
    """
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        time.sleep(min(poll_seconds, remaining))
        try:
            if not read_memory(redis).full:
                return True
        except RedisError:
            return False
    return False
