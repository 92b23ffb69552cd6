"""The Pulse Ingestor: usage pulses in, exact hourly sums out.

`create_app()` builds the Flask app, and with it the Celery app, so both
`flask run` (FLASK_APP=ingestor) and `celery -A ingestor worker` find what they need.
Importing this package builds nothing: Celery's `ingestor.celery` is made on first use.
"""

from __future__ import annotations

from functools import cache

from celery import Celery
from flask import Flask

from ingestor.settings import CONFIG_KEY, Settings

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> Flask:
    """Build the application from `settings` (default: from the environment)."""
    from ingestor import api, auth, database, observability, pulses, redis_store
    from ingestor.celery_app import celery_init_app

    app = Flask(__name__)
    app.config[CONFIG_KEY] = settings or Settings.from_env()
    database.init_app(app)
    redis_store.init_app(app)
    # Logging (LOG_FORMAT), request timing, the worker's metrics endpoint.
    observability.init_app(app)
    pulses.init_app(app)
    celery_init_app(app)
    auth.init_app(app)
    api.init_app(app)
    return app


@cache
def _celery_app() -> Celery:
    return create_app().extensions["celery"]


def __getattr__(name: str) -> Celery:
    # `celery -A ingestor` looks up `ingestor.celery`: built here on first access,
    # not at import time.
    if name == "celery":
        return _celery_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
