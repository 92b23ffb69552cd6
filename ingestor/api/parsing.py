"""Reading request bodies safely: Decimal numbers, bounded nesting, clear 400s.

Python's `json` raises RecursionError (not ValueError) on `[[[[...` nested deeply
enough, which Flask and webargs would let through as a 500; it reads `0.1` as a
binary float; and a 5,000-digit integer fails with advice about
`sys.set_int_max_str_digits`, meant for the server's programmer. Every JSON body of
the API is decoded here instead, and every invalid argument gets a message naming it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from flask.json.provider import DefaultJSONProvider
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request

# No field of the API needs a number longer than this (an amount has at most 19
# significant digits); Python's own limit for integers is 4300 digits.
MAX_NUMBER_LENGTH = 100


class BodyError(ValueError):
    """The request body is not acceptable JSON."""


class _NumberTooLong(ValueError):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.digits = sum(map(str.isdigit, text))


def _bounded(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_number(text: str) -> Any:
        if len(text) > MAX_NUMBER_LENGTH:
            raise _NumberTooLong(text)
        return parse(text)

    return parse_number


_DECODER = json.JSONDecoder(parse_float=_bounded(Decimal), parse_int=_bounded(int), parse_constant=Decimal)


def decode_json(data: bytes | str) -> Any:
    """Decode a JSON document with fractional numbers as Decimal; BodyError if invalid."""
    try:
        if isinstance(data, bytes):
            data = data.decode("utf-8")
        return _DECODER.decode(data)
    except UnicodeDecodeError:
        raise BodyError("The body is not valid UTF-8.") from None
    except RecursionError:
        raise BodyError("The JSON body is nested too deeply.") from None
    except _NumberTooLong as exc:
        raise BodyError(
            f"A number in the body is too long: {exc.digits} digits, at most {MAX_NUMBER_LENGTH}"
            " characters are accepted."
        ) from None
    except ValueError as exc:
        raise BodyError(f"The body is not valid JSON: {exc}.") from None


def summarize(messages: Mapping[str, Any]) -> str:
    """One sentence naming each invalid argument and its first reason, from webargs' messages.

    `{"query": {"limit": ["Must be ..."]}}` reads "Invalid query parameter 'limit': Must be ...".
    """
    parts = []
    for location, fields in messages.items():
        what = {"query": "query parameter", "json": "body field"}.get(location, location)
        if not isinstance(fields, Mapping):
            parts.append(f"Invalid {what}: {_first(fields)}")
            continue
        for name, reasons in fields.items():
            if name == "_schema":
                parts.append(f"Invalid {location}: {_first(reasons)}")
            elif _first(reasons) == "Unknown field.":
                parts.append(f"Unknown {what} '{name}'")
            else:
                parts.append(f"Invalid {what} '{name}': {_first(reasons)}")
    return "; ".join(part.rstrip(".") for part in parts) + "."


def _first(reasons: Any) -> str:
    """The first message of a marshmallow error value (a list, or a dict by index or key)."""
    while isinstance(reasons, (list, dict)) and reasons:
        reasons = reasons[0] if isinstance(reasons, list) else next(iter(reasons.values()))
    return str(reasons)


class ApiJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider with the safe decoder (Decimal encodes as a string already)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return decode_json(s)


class ApiParser(FlaskParser):
    """webargs parser: 400 (not 422) for invalid arguments, bodies read by `decode_json`."""

    DEFAULT_VALIDATION_STATUS = 400

    def _raw_load_json(self, req):  # webargs hook
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

    def _handle_invalid_json_error(self, error, req, *args, **kwargs):
        from flask_smorest import abort

        abort(400, message=error.msg, messages={"json": [error.msg]})

    def handle_error(self, error, req, schema, *, error_status_code, error_headers):
        """webargs' 400, with a message that names what is wrong (not only the details)."""
        from flask_smorest import abort

        abort(
            error_status_code or self.DEFAULT_VALIDATION_STATUS,
            exc=error,
            message=summarize(error.messages),
            messages=error.messages,
            headers=error_headers,
        )
