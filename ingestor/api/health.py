"""Liveness (`GET /health`) and readiness (`GET /ready`) probes.

`/ready` answers `{"status", "services": {name: state}}`: one state per service, "ok"
or why not ("unavailable"; for Redis also "out of memory"). It is unauthenticated, so it never carries a driver's text
(hosts, ports, database names): that goes to the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import current_app
from sqlalchemy import text

from ingestor.api.blueprint import ApiBlueprint
from ingestor.api.errors import (
    ERROR_CODES,
    POSTGRESQL,
    RABBITMQ,
    REDIS,
    RETRY_AFTER,
    SERVICE_NAMES,
    error_response,
)
from ingestor.api.schemas import HealthSchema, ReadinessSchema
from ingestor.database import get_database
from ingestor.redis_store import get_redis, read_memory

logger = logging.getLogger(__name__)

blueprint = ApiBlueprint("health", __name__, description="Probes for load balancers and orchestrators")

OK = "ok"
UNAVAILABLE = "unavailable"
OUT_OF_MEMORY = "out of memory"


@blueprint.get("/health")
@blueprint.response(200, HealthSchema)
@blueprint.doc(security=[])
def health():
    """200 as long as the web process serves requests."""
    return {"status": "ok"}


def _check(service: str, probe: Callable[[], object]) -> str:
    try:
        state = probe()
    except Exception as exc:  # any failure means "not ready"; the detail is logged
        logger.warning("readiness: %s unavailable: %s: %s", service, type(exc).__name__, exc)
        return UNAVAILABLE
    return state if isinstance(state, str) else OK


def _redis_state() -> str:
    # A full Redis answers PING but refuses every pulse: not ready to accept any.
    return OUT_OF_MEMORY if read_memory(get_redis()).full else OK


def _ping_postgresql() -> None:
    with get_database().engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def _ping_rabbitmq() -> None:
    with current_app.extensions["celery"].connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=5)


@blueprint.get("/ready")
@blueprint.response(200, ReadinessSchema)
@blueprint.errors(503)
@blueprint.doc(security=[])
def ready():
    """200 when RabbitMQ, Redis and PostgreSQL all answer and Redis has room; 503 naming the ones that do not."""
    services = {
        POSTGRESQL: _check(POSTGRESQL, _ping_postgresql),
        REDIS: _check(REDIS, _redis_state),
        RABBITMQ: _check(RABBITMQ, _ping_rabbitmq),
    }
    failing = [name for name, state in services.items() if state != OK]
    if failing:
        names = ", ".join(f"{SERVICE_NAMES[name]} {services[name]}" for name in failing)
        # The probe's own shape beside the error: a probe reads one format whatever the status.
        return error_response(
            503,
            ERROR_CODES[503],
            f"Not ready: {names}.",
            {"services": failing},
            dict(RETRY_AFTER),
            extra={"status": UNAVAILABLE, "services": services},
        )
    return {"status": "ready", "services": services}
