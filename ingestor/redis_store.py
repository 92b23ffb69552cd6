"""The Redis client of the process, where pulses are summed between flushes.

Also what the rest of the ingestor knows about Redis running out of memory: with the
`noeviction` policy the README asks for, a full Redis refuses every command that
could grow its memory (`-OOM command not allowed when used memory > 'maxmemory'`),
the ingest script included. `read_memory` reads the figures Redis decides on, and
`is_out_of_memory` recognizes the refusal in either of its forms.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from flask import Flask, current_app
from redis import Redis
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError

from ingestor.settings import settings_of

# Redis's own wording, in the OOM reply to a command and, on Redis before 7, inside the
# "ERR Error running script" reply a script gets when a command it calls is refused.
OOM_REPLY_TEXT = "command not allowed when used memory > 'maxmemory'"


class RedisSettingsError(RuntimeError):
    """The Redis the ingestor writes to is set up in a way that loses or double-counts."""


def check_redis_settings(redis: Redis) -> None:
    """Refuse to start on a Redis that may evict keys: `maxmemory-policy noeviction`.

    An evicted dedupe key or message ledger is a pulse counted twice, an evicted window
    revenue lost. A Redis whose CONFIG command is renamed away (some managed services)
    cannot be checked: that is the operator's to ensure, as the README says.
    """
    try:
        policy = redis.config_get("maxmemory-policy").get("maxmemory-policy")
    except ResponseError:
        return
    if policy not in (None, "noeviction", b"noeviction"):
        shown = policy.decode() if isinstance(policy, bytes) else policy
        raise RedisSettingsError(
            f"Redis maxmemory-policy is {shown!r}: the ingestor needs 'noeviction' (an evicted "
            "dedupe key is a pulse counted twice); run CONFIG SET maxmemory-policy noeviction "
            "and set it in redis.conf"
        )


def init_app(app: Flask) -> None:
    """Attach a Redis client built from the app's settings."""
    settings = settings_of(app)
    app.extensions["redis"] = Redis.from_url(
        settings.redis_url,
        # Pooled connections idle for an hour are checked first.
        health_check_interval=30,
        # A Redis that drops packets raises TimeoutError (an outage: a 503, a task
        # retry) instead of holding the caller for the OS TCP timeout. Set here, not
        # left to redis-py's defaults: its 5 s read timeout would cut a long flush script.
        socket_connect_timeout=settings.redis_connect_timeout_seconds,
        socket_timeout=settings.redis_socket_timeout_seconds,
    )


def get_redis() -> Redis:
    """The Redis client of the current app."""
    return current_app.extensions["redis"]


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
    """Redis's memory figures now (one INFO memory call; raises RedisError when unreachable)."""
    return MemoryUsage.from_info(redis.info("memory"))


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
