"""Liveness: `GET /health` answers while the process runs."""

from __future__ import annotations

from flask import Blueprint

blueprint = Blueprint("health", __name__)


@blueprint.get("/health")
def health() -> tuple[dict[str, str], int]:
    """200 as long as the web process serves requests."""
    return {"status": "ok"}, 200
