"""Unit tests of how a full Redis is recognized, measured, warned about and waited out."""

from __future__ import annotations

import logging
import time

import pytest
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError

from ingestor.observability.redis_memory import MemoryWatch
from ingestor.pulses.tasks import MEMORY_HOLD_MAX_SECONDS, memory_hold_seconds
from ingestor.redis_store import MemoryUsage, is_out_of_memory, wait_for_room

OOM = "command not allowed when used memory > 'maxmemory'."


class InfoOnly:
    """Stands in for Redis where only INFO memory is called; counts the calls."""

    def __init__(self, used: int, maxmemory: int) -> None:
        self.reply: dict | Exception = {
            "used_memory": used,
            "mem_not_counted_for_evict": 0,
            "maxmemory": maxmemory,
        }
        self.calls = 0

    def info(self, section: str) -> dict:
        assert section == "memory"
        self.calls += 1
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (OutOfMemoryError(OOM), True),
        # Redis before 7: the OOM reply of a command inside a script, wrapped in a script error.
        (ResponseError(f"Error running script (call to f_e216...): @user_script:28: -OOM {OOM}"), True),
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), False),
        (RedisError(OOM), False),  # not a reply of the server
        (ValueError(OOM), False),
    ],
)
def test_out_of_memory_is_recognized_in_both_forms(exc: Exception, expected: bool) -> None:
    assert is_out_of_memory(exc) is expected


def test_memory_usage_is_what_redis_compares_with_maxmemory() -> None:
    usage = MemoryUsage.from_info({"used_memory": 1100, "mem_not_counted_for_evict": 150, "maxmemory": 1000})
    assert (usage.used_bytes, usage.used_ratio, usage.full) == (950, 0.95, False)
    assert MemoryUsage.from_info({"used_memory": 1001, "maxmemory": 1000}).full
    unlimited = MemoryUsage.from_info({"used_memory": 10**9, "maxmemory": 0})
    assert (unlimited.used_ratio, unlimited.full) == (None, False)
    assert "no maxmemory" in unlimited.describe()


def test_the_warning_comes_before_refusals_and_at_a_bounded_rate(caplog: pytest.LogCaptureFixture) -> None:
    redis, clock = InfoOnly(used=850, maxmemory=1000), Clock()
    watch = MemoryWatch(redis, warn_percent=80, interval_seconds=10, clock=clock)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="ingestor.observability.redis_memory"):
        for _ in range(1000):  # a thousand batches within one interval: one INFO call
            watch.check()
        assert redis.calls == 1
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        assert "running low" in caplog.records[0].getMessage() and "85%" in caplog.records[0].getMessage()
        clock.now += 10
        redis.reply = {"used_memory": 700, "maxmemory": 1000}
        watch.check()
        assert redis.calls == 2 and len(caplog.records) == 1  # below the threshold: quiet
        clock.now += 10
        redis.reply = RedisError("unreachable")
        watch.check()  # an outage is not this watch's to report
        assert len(caplog.records) == 1


def test_a_refusal_logs_an_error_with_fresh_figures(caplog: pytest.LogCaptureFixture) -> None:
    redis, clock = InfoOnly(used=900, maxmemory=1000), Clock()
    watch = MemoryWatch(redis, warn_percent=80, interval_seconds=10, clock=clock)  # type: ignore[arg-type]
    watch.check()  # 90%: cached
    redis.reply = {"used_memory": 1200, "maxmemory": 1000}
    with caplog.at_level(logging.ERROR, logger="ingestor.observability.redis_memory"):
        watch.refused("raw", OutOfMemoryError(OOM), held="raw batch held unacked", retry_in=2)
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    message = record.getMessage()
    assert record.levelname == "ERROR"
    assert message.startswith("Redis is out of memory (used ") and "(120%)" in message  # not the stale 90%
    assert "add memory" in message and "raw batch held unacked" in message


def test_memory_holds_back_off_up_to_the_cap() -> None:
    holds = [memory_hold_seconds(n, cap=30) for n in range(1, 12)]
    assert 0.5 <= holds[0] <= 1 and 1 <= holds[1] <= 2
    assert all(15 <= hold <= 30 for hold in holds[6:])
    assert memory_hold_seconds(10_000, cap=MEMORY_HOLD_MAX_SECONDS) <= MEMORY_HOLD_MAX_SECONDS


def test_a_held_batch_waits_until_redis_has_room_or_its_time_is_up() -> None:
    redis = InfoOnly(used=1200, maxmemory=1000)
    started = time.monotonic()
    assert wait_for_room(redis, 0.05, poll_seconds=0.01) is False  # type: ignore[arg-type]
    assert 0.05 <= time.monotonic() - started < 1 and redis.calls >= 3
    redis.reply = {"used_memory": 1200, "maxmemory": 0}  # the operator lifted the limit
    started = time.monotonic()
    assert wait_for_room(redis, 10, poll_seconds=0.01) is True  # type: ignore[arg-type]
    assert time.monotonic() - started < 1
    redis.reply = RedisError("unreachable")
    assert wait_for_room(redis, 10, poll_seconds=0.01) is False  # type: ignore[arg-type]
