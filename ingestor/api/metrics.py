"""`GET /metrics`: Prometheus metrics of every web worker, and the Redis backlog gauges.

No JWT: a Prometheus scraper has none, and the metrics hold counts and durations, no
tenant data. When METRICS_TOKEN is set, a scrape must send it as a bearer token
(Prometheus: `authorization: {credentials: ...}`); deploys that keep /metrics off the
public network can leave it unset.
"""

from __future__ import annotations

import hmac

from flask import Response, current_app, request

from ingestor.api.blueprint import ApiBlueprint
from ingestor.api.errors import error_response
from ingestor.observability.metrics import registry_of
from ingestor.settings import get_settings

blueprint = ApiBlueprint("metrics", __name__, description="Prometheus metrics")

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def _authorized(token: str) -> bool:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), token.encode())


@blueprint.get("/metrics")
@blueprint.response(
    200, {"type": "string"}, content_type=PROMETHEUS_TEXT, description="Prometheus text format"
)
@blueprint.errors(401)
@blueprint.doc(security=[])
def metrics():
    """Counters, histograms and gauges in the Prometheus text format; 401 without METRICS_TOKEN when one is set."""
    from prometheus_client import generate_latest

    token = get_settings().metrics_token
    if token and not _authorized(token):
        return error_response(
            401,
            "unauthorized",
            "This endpoint needs the metrics bearer token.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    registry = current_app.extensions.get("metrics_registry")
    if registry is None:
        # Built on first scrape, in the serving process: by then the multiprocess
        # directory (if any) is in place.
        registry = current_app.extensions["metrics_registry"] = registry_of(current_app)
    return Response(generate_latest(registry), mimetype=None, content_type=PROMETHEUS_TEXT)
