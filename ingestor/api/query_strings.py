"""Query strings mean what they say: no unknown parameter, no repeat taken as "the first".

webargs ignores a query parameter its schema does not name (`?tennant=acme` listed
every tenant) and keeps the first of a repeated one; routes without a query schema
ignore the whole query string. Here the API's OpenAPI document is the contract: a
request may carry exactly the query parameters its operation documents, each once
unless it is documented as an array (a multi-value filter, see `multi_value`), which
the schema then reads as "any of these values". Anything else is a 400 naming it.
Routes are looked up in the document, so a new route obeys the rule unchanged.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from flask import Request
from flask_smorest.spec.plugins import FlaskPlugin
from marshmallow import fields, validate
from werkzeug.exceptions import BadRequest

MAX_FILTER_VALUES = 100


def multi_value(value_field: fields.Field, description: str = "", **kwargs: Any) -> fields.List:
    """A filter that may be repeated (`tenant=a&tenant=b`), meaning any of the values."""
    repeat = f"repeat the parameter to match any of up to {MAX_FILTER_VALUES} values"
    return fields.List(
        value_field,
        validate=validate.Length(1, MAX_FILTER_VALUES),
        metadata={"description": f"{description}; {repeat}" if description else repeat},
        **kwargs,
    )


class QueryParameterError(BadRequest):
    """400 naming the query parameters that are unknown or repeated."""

    def __init__(self, message: str, reasons: dict[str, list[str]]) -> None:
        super().__init__(message)
        self.data = {"message": message, "messages": {"query": reasons}}


class QueryContract:
    """The query parameters each operation documents: {(OpenAPI path, METHOD): {name: multi}}."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self._operations: dict[tuple[str, str], dict[str, bool]] = {}
        for path, operations in spec.get("paths", {}).items():
            for method, operation in operations.items():
                if method == "parameters":  # the path's own parameters, not an operation
                    continue
                self._operations[(path, method.upper())] = {
                    parameter["name"]: parameter.get("schema", {}).get("type") == "array"
                    for parameter in operation.get("parameters", [])
                    if parameter["in"] == "query"
                }

    def check(self, request: Request) -> None:
        """Raise QueryParameterError if `request` has an unknown or wrongly repeated parameter."""
        if not request.args or request.url_rule is None:
            return
        path = FlaskPlugin.flaskpath2openapi(request.url_rule.rule)
        method = "GET" if request.method == "HEAD" else request.method
        allowed = self._operations.get((path, method), {})
        unknown = [name for name in request.args if name not in allowed]
        if unknown:
            raise QueryParameterError(
                _unknown_message(request, unknown, allowed),
                {name: ["Unknown parameter."] for name in unknown},
            )
        repeated = {
            name: len(values)
            for name, values in request.args.lists()
            if len(values) > 1 and not allowed[name]
        }
        if repeated:
            reasons = {
                name: [f"Given {count} times; it takes one value."] for name, count in repeated.items()
            }
            listed = ", ".join(f"'{name}' ({count} times)" for name, count in repeated.items())
            raise QueryParameterError(
                f"Query parameters given more than once, each takes one value: {listed}.", reasons
            )


def _unknown_message(request: Request, unknown: list[str], allowed: Mapping[str, bool]) -> str:
    names = []
    for name in unknown:
        close = difflib.get_close_matches(name, list(allowed), n=1)
        names.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    takes = f"it takes {', '.join(allowed)}" if allowed else "it takes none"
    route = FlaskPlugin.flaskpath2openapi(str(request.url_rule))
    return f"Unknown query parameter {', '.join(names)} for {request.method} {route}: {takes}."
