"""The API's Blueprint class and the documentation of error responses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask_jwt_extended import verify_jwt_in_request
from flask_smorest import Blueprint

from ingestor.api.errors import ErrorSchema
from ingestor.api.parsing import ApiParser

ERROR_DESCRIPTIONS = {
    400: "Invalid request: the message and details name what is wrong",
    401: "Missing, malformed, expired or tampered bearer token, or wrong credentials",
    403: "The user is disabled",
    404: "No such resource",
    413: "Request body larger than the limit",
    415: "Body is not application/json",
    429: "Too many attempts; retry after Retry-After seconds",
    503: "A service the request needs (PostgreSQL, Redis or RabbitMQ) is unavailable; retry after Retry-After seconds",
}


class ApiBlueprint(Blueprint):
    """flask-smorest's Blueprint with the API's argument parser (400s, safe JSON)."""

    ARGUMENTS_PARSER = ApiParser()

    def errors(self, *codes: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Document the error responses an operation can return, in the error format."""

        def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
            for code in codes:
                view = self.alt_response(code, schema=ErrorSchema, description=ERROR_DESCRIPTIONS[code])(view)
            return view

        return decorator

    def require_token(self) -> None:
        """Every route of this blueprint needs a valid bearer token, checked before anything else."""

        def check_token() -> None:
            verify_jwt_in_request()  # raises; flask-jwt-extended answers 401 (see ingestor.auth)

        self.before_request(check_token)
