"""Observability: structured logs and Prometheus metrics for web, worker and beat.

`init_app(app)` configures the process's logging from the settings, hooks Celery's
logging and worker signals, and times every HTTP request. Metrics are recorded per
batch (never per pulse) by the callers, through `ingestor.observability.metrics`.
"""

from __future__ import annotations

import logging
import time

from flask import Flask, g, request

from ingestor.observability import logs, metrics, redis_memory
from ingestor.settings import settings_of

logger = logging.getLogger("ingestor.http")


def init_app(app: Flask) -> None:
    """Configure logging for `app`'s settings; log and time every request."""
    settings = settings_of(app)
    logs.configure_logging(settings.log_format, settings.log_level)
    logs.connect_celery_signals(settings.log_format, settings.log_level)
    metrics.connect_worker_signals(app)
    redis_memory.init_app(app)

    @app.before_request
    def _start_timer() -> None:
        g.request_started = time.perf_counter()

    @app.after_request
    def _log_request(response):  # Flask hook
        started = g.pop("request_started", None)
        if started is None:
            return response
        duration = time.perf_counter() - started
        # The rule, not the path: /api/v1/pulses/<int:usage_id> is one route, whatever the id.
        route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        metrics.record_request(request.method, route, response.status_code, duration)
        logger.info(
            "%s %s %d %.1fms",
            request.method,
            route,
            response.status_code,
            duration * 1000,
            extra={
                "method": request.method,
                "route": route,
                "status": response.status_code,
                "duration_ms": round(duration * 1000, 3),
            },
        )
        return response
