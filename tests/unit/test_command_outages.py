"""The one-line message a command ends with when a service is out."""

from __future__ import annotations

import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc

from ingestor.commands import outage_message


def test_each_service_is_named_with_the_drivers_first_line() -> None:
    postgresql = sqlalchemy.exc.OperationalError(
        "SELECT 1", {}, Exception("refused\n\tIs the server running?")
    )

    assert outage_message(postgresql) == "PostgreSQL: refused; run it again once PostgreSQL answers"
    assert outage_message(redis.exceptions.ConnectionError("gone")).startswith("Redis: gone;")
    assert outage_message(kombu.exceptions.OperationalError("no node")).startswith("RabbitMQ: no node;")


def test_redis_full_says_it_needs_room_not_that_it_is_down() -> None:
    message = outage_message(redis.exceptions.OutOfMemoryError("OOM command not allowed"))

    assert message == "Redis: out of memory (OOM command not allowed); run it again once Redis has room"


def test_a_bug_is_no_outage() -> None:
    assert outage_message(ValueError("bad")) is None
    assert outage_message(redis.exceptions.ResponseError("ERR script")) is None
