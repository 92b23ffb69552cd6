"""The HTTP API: a flask-smorest `Api` under /api/v1, JSON only, documented by OpenAPI.

`init_app` wires bearer tokens and the login's rate limits, the JSON handling
(Decimal-safe decoding, JSON errors, size cap), the OpenAPI document at
/api/v1/openapi.json, and the blueprints of each domain.
"""

from __future__ import annotations

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from ingestor.api import login, login_limits, tokens
from ingestor.api.blueprint import check_requests_outside_api_blueprints
from ingestor.api.bodies import ApiRequest
from ingestor.api.errors import IngestorApi
from ingestor.api.parsing import ApiJSONProvider
from ingestor.api.query_strings import QueryContract
from ingestor.settings import settings_of

BEARER_AUTH = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}


def init_app(app: Flask) -> IngestorApi:
    """Register the API on `app`."""
    settings = settings_of(app)
    # Before the Api: the login limiter's request hook then runs before the API's checks.
    tokens.init_app(app)
    login_limits.init_app(app, login.blueprint)
    if settings.trusted_proxies:
        # The client address (logs, the login rate limit) from X-Forwarded-For, as set by
        # that many proxies in front; without them a client could choose its own address.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)  # type: ignore[method-assign]
    app.json = ApiJSONProvider(app)
    # Bodies read whole or refused with a 413, whatever their framing.
    app.request_class = ApiRequest
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        API_TITLE="Pulse Ingestor",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api/v1",
        OPENAPI_JSON_PATH="openapi.json",
        # Every operation needs a bearer token unless it says `security: []`.
        API_SPEC_OPTIONS={
            "security": [{"bearerAuth": []}],
            "components": {"securitySchemes": {"bearerAuth": BEARER_AUTH}},
        },
    )
    api = IngestorApi(app)
    # The pulse schema documents POST /api/v1/pulses (its body is parsed by hand: it
    # may be one pulse or a list).
    from datetime import timedelta

    from ingestor.pulses.schema import PulseSchema

    api.spec.components.schema(
        "Pulse",
        schema=PulseSchema(
            late_limit=timedelta(seconds=settings.late_limit_seconds),
            future_limit=timedelta(seconds=settings.future_limit_seconds),
        ),
    )

    from ingestor.api import health, metrics, pulses, rejected, usage

    api.register_blueprint(health.blueprint)
    api.register_blueprint(metrics.blueprint)
    api.register_blueprint(login.blueprint)
    api.register_blueprint(pulses.blueprint)
    api.register_blueprint(rejected.blueprint)
    api.register_blueprint(usage.blueprint)
    # Every route's query parameters, as the OpenAPI document states them.
    app.extensions["query_contract"] = QueryContract(api.spec.to_dict())
    check_requests_outside_api_blueprints(app)
    return api
