"""Request bodies are read whole or refused, whatever their framing.

werkzeug enforces `MAX_CONTENT_LENGTH` on a `Content-Length` (413 before reading),
but on a body whose end only the server knows (chunked, where gunicorn and werkzeug's
development server set `wsgi.input_terminated`) it stops reading at the limit and
hands back what it has read: a body one byte too long parsed cut, and a body whose
first MAX_BODY_BYTES bytes happen to be valid JSON was accepted with its rest dropped.
`ApiRequest` reads such a body up to one byte past the limit, which tells a body of
exactly the limit from a longer one.

A refused body is still read to its end, up to `DRAINED_LIMITS` times the limit, and
thrown away before the 413 is sent: a server that closes a connection with bytes
unread makes its kernel reset it, and a client still sending then gets a broken pipe
instead of the answer (gunicorn does no lingering close, as nginx does).

A body with neither `Content-Length` nor `Transfer-Encoding` has no end a server can
find (werkzeug reads it as empty): a request that takes a body is answered 411 rather
than parsed as nothing, and a request that takes none is refused if it has one.
"""

from __future__ import annotations

import typing as t

import humanize
from flask import Request
from werkzeug.exceptions import BadRequest, LengthRequired, RequestEntityTooLarge
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream

# Methods whose requests carry the API's bodies; the others take none.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# A refused body is read and dropped up to this many times the limit (16 MiB by
# default), so its client receives the 413; a larger one may see the connection reset.
DRAINED_LIMITS = 8
DRAIN_READ_BYTES = 65536


def discard(stream: t.IO[bytes], max_bytes: int) -> None:
    """Read and drop up to `max_bytes` of `stream`, or until its end."""
    left = max_bytes
    while left > 0:
        chunk = stream.read(min(DRAIN_READ_BYTES, left))
        if not chunk:
            return
        left -= len(chunk)


def describe_limit(max_bytes: int) -> str:
    """`2097152 bytes (2.0 MiB)`: the body limit in bytes and in human terms."""
    return f"{max_bytes} bytes ({humanize.naturalsize(max_bytes, binary=True)})"


class BodyTooLarge(RequestEntityTooLarge):
    """413 naming the limit (in the error format: see `IngestorApi.handle_http_exception`)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            f"The request body is larger than the limit of {describe_limit(max_bytes)}, MAX_BODY_BYTES:"
            " nothing of it was taken; send it in smaller requests."
        )
        self.data = {"messages": {"max_body_bytes": max_bytes}}


class _BodyUpToTheLimit(LimitedStream):
    """A terminated stream read to one byte past `max_bytes`; that byte is a 413."""

    def __init__(self, stream: t.IO[bytes], max_bytes: int) -> None:
        super().__init__(stream, max_bytes + 1, is_max=True)
        self.max_bytes = max_bytes
        self.terminated = stream

    def readinto(self, b: bytearray) -> int | None:  # type: ignore[override]
        size = super().readinto(b)
        if self.is_exhausted:
            self.refuse()
        return size

    def on_exhausted(self) -> None:
        self.refuse()

    def refuse(self) -> t.NoReturn:
        # The stream is terminated (its end is marked): reading it to the end cannot block.
        discard(self.terminated, DRAINED_LIMITS * self.max_bytes)
        raise BodyTooLarge(self.max_bytes)


class ApiRequest(Request):
    """Flask's request, its body read whole or refused with a 413 naming the limit."""

    @cached_property
    def stream(self) -> t.IO[bytes]:
        limit = self.max_content_length
        if limit is not None and not self.shallow:
            if self.content_length is not None and self.content_length > limit:
                # Never past its Content-Length: a server's raw socket would block there.
                discard(self.environ["wsgi.input"], min(self.content_length, DRAINED_LIMITS * limit))
                raise BodyTooLarge(limit)
            if self.content_length is None and "wsgi.input_terminated" in self.environ:
                return t.cast(t.IO[bytes], _BodyUpToTheLimit(self.environ["wsgi.input"], limit))
        return super().stream


def check_body_framing(request: Request, max_bytes: int) -> None:
    """411 for a body without framing, 400 for a body where the method takes none.

    Judged by the headers alone: nothing is read.
    """
    chunked = "HTTP_TRANSFER_ENCODING" in request.environ
    if request.method in BODY_METHODS:
        # A chunked body through a server that does not mark its end would read as empty.
        if request.content_length is None and not (chunked and "wsgi.input_terminated" in request.environ):
            raise LengthRequired(
                "Send the body with a Content-Length or with Transfer-Encoding: chunked: without either,"
                f" its end cannot be found. The limit is {describe_limit(max_bytes)}."
            )
    elif request.content_length or chunked:
        raise BadRequest(f"{request.method} {request.path} takes no body: send the request without one.")
