"""Liveness (`GET /health`) and readiness (`GET /ready`) probes."""

from __future__ import annotations

from flask import current_app
from sqlalchemy import text

from ingestor.api.blueprint import ApiBlueprint
from ingestor.api.errors import error_response
from ingestor.api.schemas import HealthSchema, ReadinessSchema
from ingestor.database import get_database
from ingestor.redis_store import get_redis, read_memory

blueprint = ApiBlueprint("health", __name__, description="Probes for load balancers and orchestrators")


@blueprint.get("/health")
@blueprint.response(200, HealthSchema)
@blueprint.doc(security=[])
def health():
    """200 as long as the web process serves requests."""
    return {"status": "ok"}


def _check(probe) -> str:
    try:
        state = probe()
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready", named below
        return f"unreachable: {type(exc).__name__}: {exc}"[:300]
    return state or "ok"


def _redis_state() -> str:
    # A full Redis answers PING but refuses every pulse: not ready to accept any.
    return "out of memory" if read_memory(get_redis()).full else "ok"


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
    """200 when RabbitMQ, Redis and PostgreSQL all answer and Redis has room; 503 naming what is wrong."""
    checks = {
        "rabbitmq": _check(_ping_rabbitmq),
        "redis": _check(_redis_state),
        "postgresql": _check(_ping_postgresql),
    }
    failing = sorted(name for name, status in checks.items() if status != "ok")
    if failing:
        reasons = ", ".join(f"{name} {checks[name].partition(':')[0]}" for name in failing)
        return error_response(503, "service_unavailable", f"Not ready: {reasons}.", checks)
    return {"status": "ready", "checks": checks}
