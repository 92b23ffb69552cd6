"""Every API error is JSON: `{"error": {"code", "message", "details"?}}`.

No HTML error page and no stack trace ever reaches a client: unknown routes, wrong
methods, oversized bodies and unexpected exceptions go through the same handler.

A dependency outage is answered here too, for every route at once: the errors of the
PostgreSQL, Redis and RabbitMQ clients (raised by a view, by the token's user lookup or
by the login rate limiter) are a 503 with `Retry-After` naming the service. The
driver's text (hosts, ports) is logged, never sent.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import jsonify
from flask_smorest import Api
from marshmallow import Schema, fields
from werkzeug.exceptions import HTTPException

# The services and their outage errors are defined once, beside the plumbing they
# name; imported here under the names the API's modules use.
from ingestor.outages import OUTAGE_ERRORS, POSTGRESQL, RABBITMQ, REDIS, REDIS_FULL_ERRORS, SERVICE_NAMES

__all__ = [
    "OUTAGE_ERRORS",
    "POSTGRESQL",
    "RABBITMQ",
    "REDIS",
    "SERVICE_NAMES",
    "ServiceUnavailable",
    "error_response",
    "unavailable_response",
]

logger = logging.getLogger(__name__)

# Machine-readable codes of the HTTP errors the API answers.
ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
    500: "internal_error",
    503: "service_unavailable",
}


class ErrorBodySchema(Schema):
    code = fields.String(required=True, metadata={"description": "Machine-readable error code"})
    message = fields.String(required=True, metadata={"description": "What is wrong, for a human"})
    details = fields.Raw(metadata={"description": "Per-field or per-item reasons, when there are any"})


class ErrorSchema(Schema):
    """The body of every error response."""

    error = fields.Nested(ErrorBodySchema, required=True)


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
):
    """A Flask response tuple in the API's error format; `extra` adds top-level fields."""
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return jsonify({**(extra or {}), "error": body}), status, headers or {}


# OUTAGE_ERRORS (ingestor.outages) are each a 503 naming its service. Redis refusing a
# write for memory (outages.REDIS_FULL_ERRORS: the login's attempt counters, a populate
# job) is a 503 naming Redis too: the request changed nothing, and the same request
# succeeds once an operator adds memory, as after an outage.

# How long a client should wait before retrying after an outage: long enough for a
# pooled connection to be re-established, short enough not to hold up a billing feed.
RETRY_AFTER_SECONDS = 5
RETRY_AFTER = {"Retry-After": str(RETRY_AFTER_SECONDS)}


class ServiceUnavailable(Exception):
    """A service the request needs is down; `hint` tells the client what it means for them."""

    def __init__(self, service: str, hint: str = "") -> None:
        super().__init__(f"{service} unavailable")
        self.service = service
        self.hint = hint


def unavailable_response(service: str, hint: str = ""):
    """The 503 naming `service` (in the message and as `details.service`), with `Retry-After`."""
    message = f"{SERVICE_NAMES[service]} is unavailable; retry in {RETRY_AFTER_SECONDS} seconds."
    if hint:
        message = f"{message} {hint}"
    return error_response(503, ERROR_CODES[503], message, {"service": service}, dict(RETRY_AFTER))


def _outage_handler(service: str):
    def handle(error: Exception):
        # The detail (host, port, driver message) is for the operator only.
        logger.warning("%s unavailable: %s: %s", service, type(error).__name__, error)
        return unavailable_response(service)

    return handle


def _redis_full(error: Exception):
    logger.error("Redis refused a write for memory: %s", error)
    return unavailable_response(REDIS, "It is out of memory; nothing was changed.")


def _service_unavailable(error: ServiceUnavailable):
    logger.warning("%s unavailable: %r", error.service, error.__cause__)
    return unavailable_response(error.service, error.hint)


class IngestorApi(Api):
    """flask-smorest's Api, answering errors in the ingestor's JSON format."""

    ERROR_SCHEMA = ErrorSchema

    def _register_error_handlers(self) -> None:
        """The HTTP errors (flask-smorest's), and the outages of each service as 503s."""
        super()._register_error_handlers()
        for service, errors in OUTAGE_ERRORS.items():
            for error in errors:
                self._app.register_error_handler(error, _outage_handler(service))
        for error in REDIS_FULL_ERRORS:
            self._app.register_error_handler(error, _redis_full)
        self._app.register_error_handler(ServiceUnavailable, _service_unavailable)

    def handle_http_exception(self, error: HTTPException):
        """Turn any HTTP error (and any unexpected exception, as a 500) into JSON."""
        if getattr(error, "response", None) is not None:
            # Already answered in this format by whoever raised it (the login rate limiter).
            return error.response
        status = error.code or 500
        data = getattr(error, "data", None) or {}
        details = data.get("messages") or data.get("errors")
        if status == 500:
            # The cause is logged by Flask with its traceback; the client learns nothing of it.
            message = "Internal error; it has been logged."
            details = None
        else:
            message = data.get("message") or error.description or error.name
            if details is not None and status == 400 and not data.get("message"):
                message = "The request is invalid; see details."
        headers = dict(data.get("headers") or {})
        if status == 405 and error.get_headers():
            headers.update({k: v for k, v in error.get_headers() if k.lower() == "allow"})
        return error_response(status, ERROR_CODES.get(status, "error"), message, details, headers)
