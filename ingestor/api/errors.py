"""Every API error is JSON: `{"error": {"code", "message", "details"?}}`.

No HTML error page and no stack trace ever reaches a client: unknown routes, wrong
methods, oversized bodies and unexpected exceptions go through the same handler.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import jsonify
from flask_smorest import Api
from marshmallow import Schema, fields
from werkzeug.exceptions import HTTPException

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
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
):
    """A Flask response tuple in the API's error format."""
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return jsonify(error=body), status, headers or {}


class IngestorApi(Api):
    """flask-smorest's Api, answering errors in the ingestor's JSON format."""

    ERROR_SCHEMA = ErrorSchema

    def handle_http_exception(self, error: HTTPException):
        """Turn any HTTP error (and any unexpected exception, as a 500) into JSON."""
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
