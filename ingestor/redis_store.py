"""The Redis client of the process, where pulses are summed between flushes."""

from __future__ import annotations

from flask import Flask, current_app
from redis import Redis


def init_app(app: Flask) -> None:
    """Attach a Redis client built from the app's settings."""
    # health_check_interval: pooled connections idle for an hour are checked first.
    app.extensions["redis"] = Redis.from_url(app.config["SETTINGS"].redis_url, health_check_interval=30)


def get_redis() -> Redis:
    """The Redis client of the current app."""
    return current_app.extensions["redis"]
