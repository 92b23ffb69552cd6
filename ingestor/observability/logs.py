"""Structured logs: one JSON object per line (or readable text), secrets redacted.

`LOG_FORMAT=json` (the default outside development) writes every record as one JSON
line: `time`, `level`, `logger`, `message`, `process`, and the structured fields the
caller passed in `extra={...}` (tenant counts, batch ids, durations...). Inside a
Celery task, `task_id` and `task_name` are added. `LOG_FORMAT=text` keeps the
classic one-line format for a terminal.

The web (Flask, gunicorn via `gunicorn_config.py`), the worker and beat all format
through `build_formatter`; Celery replaces the root logger's handlers when it sets up
logging, so its `after_setup_logger` / `after_setup_task_logger` signals put our
formatter back on the handlers it installed.

Nothing the ingestor logs holds a password or token; `RedactingFilter` is the safety
net for what libraries log: credentials inside URLs are masked, and a structured
field whose name says password/token/secret/authorization is replaced.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from celery.signals import after_setup_logger, after_setup_task_logger
from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
REDACTED = "[redacted]"
# user:password@ inside any URL (amqp://, redis://, postgresql://...).
_URL_CREDENTIALS = re.compile(r"(?P<prefix>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):(?P<secret>[^@\s/]+)@")
_SECRET_FIELD = re.compile(r"pass(word|wd)?|secret|token|authorization|api_?key|credential", re.IGNORECASE)
# Attributes every LogRecord has: anything else on a record is a caller's extra field.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# Celery's task log records carry `data` with the task's args: pulses are not log
# material (volume, and tenants' data), so only these keys of it are kept.
_CELERY_DATA_KEYS = ("id", "name", "runtime", "hostname")
# Marks the root handler `configure_logging` installed, so a second call replaces it.
_HANDLER_MARK = "_ingestor_handler"


def redact(text: str) -> str:
    """`text` with the password of every URL in it masked."""
    return _URL_CREDENTIALS.sub(r"\g<prefix>:***@", text) if "://" in text else text


class RedactingFilter(logging.Filter):
    """Masks credentials in a record's message and extra fields (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        for name, value in list(vars(record).items()):
            if name in _RECORD_ATTRIBUTES:
                continue
            if _SECRET_FIELD.search(name):
                setattr(record, name, REDACTED)
            elif isinstance(value, str):
                setattr(record, name, redact(value))
        return True


class IngestorJsonFormatter(JsonFormatter):
    """python-json-logger's formatter with the ingestor's field names and Celery task context."""

    def __init__(self) -> None:
        super().__init__(
            ["levelname", "name", "message", "process"],
            rename_fields={"levelname": "level", "name": "logger"},
            json_ensure_ascii=False,
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        # Time first, so a line reads naturally; UTC, millisecond precision.
        log_data["time"] = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        super().add_fields(log_data, record, message_dict)
        data = log_data.get("data")
        if isinstance(data, dict):
            log_data["data"] = {key: data[key] for key in _CELERY_DATA_KEYS if key in data}
        task = _current_task()
        if task is not None and task.request.id is not None:
            log_data.setdefault("task_id", task.request.id)
            log_data.setdefault("task_name", task.name)


def _current_task() -> Any:
    from celery import current_task

    # A proxy: its truth value says whether a task is running in this thread.
    return current_task._get_current_object() if current_task else None


def build_formatter(log_format: str = "json") -> logging.Formatter:
    """The formatter for `log_format` ("json" or "text"); a logging config factory too."""
    if log_format == "json":
        return IngestorJsonFormatter()
    return logging.Formatter(TEXT_FORMAT)


def configure_logging(log_format: str, log_level: str) -> None:
    """Send the root logger to stderr in `log_format`, at `log_level`; idempotent."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(build_formatter(log_format))
    handler.addFilter(RedactingFilter())
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(log_level)
    # Python warnings (Celery's SecurityWarning...) as log records, not raw stderr lines.
    logging.captureWarnings(True)


_celery_logging = {"format": "text", "level": "INFO"}


def connect_celery_signals(log_format: str, log_level: str) -> None:
    """Make the worker's and beat's own log lines use `log_format` and `log_level` too.

    LOG_LEVEL wins over `celery --loglevel`: one variable sets every process's level.
    """
    _celery_logging.update(format=log_format, level=log_level)
    after_setup_logger.connect(_restyle_celery_handlers, weak=False, dispatch_uid="ingestor-logs")
    after_setup_task_logger.connect(_restyle_celery_handlers, weak=False, dispatch_uid="ingestor-task-logs")


def _restyle_celery_handlers(logger: logging.Logger, **_: object) -> None:
    # Celery has just replaced the handlers (and set its own, colored formatter), on
    # this logger and on billiard's (pool process deaths are logged there).
    from billiard.util import get_logger as billiard_logger

    logger.setLevel(_celery_logging["level"])
    for handler in [*logger.handlers, *billiard_logger().handlers]:
        if _celery_logging["format"] == "json":
            handler.setFormatter(build_formatter("json"))
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
