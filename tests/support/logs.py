"""Capturing log records as the JSON lines the ingestor would write."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from ingestor.observability.logs import RedactingFilter, build_formatter


@contextmanager
def json_lines_of(logger: logging.Logger) -> Iterator[io.StringIO]:
    """While open, what `logger` (and its children) log, formatted and redacted as JSON lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(build_formatter("json"))
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
