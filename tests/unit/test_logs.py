"""Unit tests of the log format: one JSON object per line, with fields, without secrets."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

import pytest

from ingestor.observability.logs import REDACTED, build_formatter, redact
from tests.support.logs import json_lines_of
from tests.support.worker import ROOT


@pytest.fixture
def json_log():
    """A logger writing JSON lines (through the redacting filter) into a buffer."""
    logger = logging.getLogger("tests.json_log")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    with json_lines_of(logger) as stream:
        yield logger, stream


def lines_of(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_log_line_is_one_json_object_with_the_structured_fields(json_log):
    logger, stream = json_log
    logger.info(
        "flush finished: snapshots=%d duration=%.3fs",
        2,
        0.5,
        extra={"snapshots": 2, "batch_ids": ["b1", "b2"], "duration_seconds": 0.5},
    )

    (line,) = lines_of(stream)
    assert line["message"] == "flush finished: snapshots=2 duration=0.500s"
    assert (line["level"], line["logger"]) == ("INFO", "tests.json_log")
    assert line["snapshots"] == 2 and line["batch_ids"] == ["b1", "b2"] and line["duration_seconds"] == 0.5
    assert line["time"].endswith("+00:00") and isinstance(line["process"], int)


def test_an_exception_stays_on_its_one_line(json_log):
    logger, stream = json_log
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        logger.exception("it failed")

    assert len(stream.getvalue().splitlines()) == 1
    assert "ValueError: boom" in lines_of(stream)[0]["exc_info"]


def test_credentials_in_urls_and_secret_fields_are_redacted(json_log):
    logger, stream = json_log
    logger.warning(
        "cannot reach %s",
        "amqp://ingestor:s3cr3t-pw@rabbit:5672//",
        extra={"password": "hunter2", "access_token": "eyJabc", "url": "redis://:r3dis-pw@cache:6379/0"},
    )

    text = stream.getvalue()
    for secret in ("s3cr3t-pw", "hunter2", "eyJabc", "r3dis-pw"):
        assert secret not in text
    line = lines_of(stream)[0]
    assert line["message"] == "cannot reach amqp://ingestor:***@rabbit:5672//"
    assert line["password"] == REDACTED and line["access_token"] == REDACTED
    assert line["url"] == "redis://:***@cache:6379/0"


def test_redact_leaves_urls_without_password_alone():
    assert (
        redact("amqp://guest@rabbit:5672// and http://host/a:b")
        == "amqp://guest@rabbit:5672// and http://host/a:b"
    )


def test_text_format_is_one_readable_line():
    record = logging.LogRecord("ingestor.x", logging.INFO, __file__, 1, "counted %d", (5,), None)
    assert build_formatter("text").format(record).endswith(f"INFO [{record.process}] ingestor.x: counted 5")


def test_building_the_app_does_not_import_prometheus_client():
    # prometheus-client picks single- or multi-process mode when first imported: the
    # worker must be able to set PROMETHEUS_MULTIPROC_DIR after building the app.
    code = "import sys, ingestor; ingestor.create_app(); assert 'prometheus_client' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
