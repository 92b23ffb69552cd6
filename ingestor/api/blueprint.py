"""The API's Blueprint class, the checks every request passes, the documentation of errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, current_app, request
from flask.views import MethodView
from flask_jwt_extended import verify_jwt_in_request
from flask_smorest import Blueprint

from ingestor.api.bodies import BODY_METHODS, check_body_framing
from ingestor.api.errors import ErrorSchema
from ingestor.api.parsing import ApiParser
from ingestor.settings import get_settings

ERROR_DESCRIPTIONS = {
    400: "Invalid request: the message and details name what is wrong",
    401: "Missing, malformed, expired or tampered bearer token, or wrong credentials",
    403: "The user is disabled",
    404: "No such resource",
    411: "A body sent with neither Content-Length nor Transfer-Encoding: chunked",
    413: "Request body larger than the limit (MAX_BODY_BYTES), whatever its framing",
    415: "Body is not application/json",
    422: "Nothing in the request was valid, so nothing was accepted: the reasons per item",
    429: "Too many attempts; retry after Retry-After seconds",
    503: "A service the request needs (PostgreSQL, Redis or RabbitMQ) is unavailable; retry after Retry-After seconds",
}


def check_request() -> None:
    """Refuse what the view would otherwise ignore: unknown or repeated query parameters,
    unframed bodies, bodies where none is taken (400/411, naming what is wrong)."""
    if request.routing_exception is not None:
        return  # the 404 or 405 comes first
    current_app.extensions["query_contract"].check(request)
    check_body_framing(request, get_settings().max_body_bytes)


def check_requests_outside_api_blueprints(app: Flask) -> None:
    """`check_request` for routes no ApiBlueprint owns (the OpenAPI document's, unknown paths)."""

    def check() -> None:
        if not isinstance(app.blueprints.get(request.blueprint or ""), ApiBlueprint):
            check_request()

    app.before_request(check)


class ApiBlueprint(Blueprint):
    """flask-smorest's Blueprint with the API's argument parser (400s, safe JSON) and
    `check_request` before every view, after the token check (a bad token is a 401 first)."""

    ARGUMENTS_PARSER = ApiParser()

    def add_url_rule(
        self, rule: str, endpoint: str | None = None, view_func: Any = None, *args: Any, **options: Any
    ) -> None:
        """flask-smorest's, documenting what `check_request` answers on every operation."""
        if isinstance(view_func, type) and issubclass(view_func, MethodView):
            for method in view_func.methods or ():
                name = method.lower()
                setattr(view_func, name, self._document_checks(method)(getattr(view_func, name)))
        elif view_func is not None:
            for method in options.get("methods") or ("GET",):
                view_func = self._document_checks(method)(view_func)
        super().add_url_rule(rule, endpoint, view_func, *args, **options)

    def _document_checks(self, method: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        # 400: a query parameter the operation does not take (or repeated), or a body
        # where it takes none; 411/413: a body without framing, or too large.
        return self.errors(400, 411, 413) if method in BODY_METHODS else self.errors(400)

    def register(self, app: Flask, options: dict[str, Any]) -> None:
        # Registered last, so after `require_token`'s check, which the module set up.
        if check_request not in self.before_request_funcs.get(None, []):
            self.before_request(check_request)
        super().register(app, options)

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
            verify_jwt_in_request()  # raises; flask-jwt-extended answers 401 (see ingestor.api.tokens)

        self.before_request(check_token)
