"""Reading request bodies safely: Decimal numbers, bounded nesting, clear 400s.

Python's `json` raises RecursionError (not ValueError) on `[[[[...` nested deeply
enough, which Flask and webargs would let through as a 500; and it reads `0.1` as a
binary float. Every JSON body of the API is decoded here instead.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from flask.json.provider import DefaultJSONProvider
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request


class BodyError(ValueError):
    """The request body is not acceptable JSON."""


def decode_json(data: bytes | str) -> Any:
    """Decode a JSON document with fractional numbers as Decimal; BodyError if invalid."""
    try:
        if isinstance(data, bytes):
            data = data.decode("utf-8")
        return json.loads(data, parse_float=Decimal, parse_constant=Decimal)
    except UnicodeDecodeError:
        raise BodyError("The body is not valid UTF-8.") from None
    except RecursionError:
        raise BodyError("The JSON body is nested too deeply.") from None
    except ValueError as exc:
        raise BodyError(f"The body is not valid JSON: {exc}.") from None


class ApiJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider with the safe decoder (Decimal encodes as a string already)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return decode_json(s)


class ApiParser(FlaskParser):
    """webargs parser: 400 (not 422) for invalid arguments, bodies read by `decode_json`."""

    DEFAULT_VALIDATION_STATUS = 400

    def _raw_load_json(self, req):  # noqa: ANN001, ANN202 - webargs hook
        if not is_json_request(req):
            return core.missing
        data = req.get_data(cache=True)
        if not data:
            return core.missing
        try:
            return decode_json(data)
        except BodyError as exc:
            # webargs turns JSONDecodeError into its 400 "Invalid JSON body." answer.
            raise json.JSONDecodeError(str(exc), "x", 0) from None

    def _handle_invalid_json_error(self, error, req, *args, **kwargs):  # noqa: ANN001
        from flask_smorest import abort

        abort(400, message=error.msg, messages={"json": [error.msg]})
