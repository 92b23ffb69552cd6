"""A Celery app for `celery -A tests.support.flaky_worker worker` whose Redis fails at first.

The project's app, with one hook: the first `FAIL_TIMES` counting calls (across the
worker's pool processes, counted in Redis under `FAIL_KEY`) raise Redis's
ConnectionError, a transient error the pulse tasks retry with backoff. A test sees
the retry path run on a real broker, e.g. through Celery's native delayed delivery
on quorum queues. Test code only; the project has no such hook.
"""

from __future__ import annotations

import os
from typing import Any

import redis.exceptions

from ingestor import create_app

_flask_app = create_app()
_counter = _flask_app.extensions["pulses"].counter
_count = _counter.count


def _fail_first(countable: Any) -> int:
    redis_client = _flask_app.extensions["redis"]
    if redis_client.incr(os.environ["FAIL_KEY"]) <= int(os.environ["FAIL_TIMES"]):
        raise redis.exceptions.ConnectionError("injected by tests.support.flaky_worker")
    return _count(countable)


_counter.count = _fail_first
celery = _flask_app.extensions["celery"]
