"""The project's own publishers put each task on its queue (no worker runs here)."""

from __future__ import annotations

import pytest

from ingestor.pulses.task_names import INGEST_PULSE, INGEST_PULSES, PERSIST_PULSES
from ingestor.settings import settings_of
from tests.support.worker import queue_depth

pytestmark = pytest.mark.usefixtures("clean_state")


def test_tasks_are_routed_to_their_queues(app, settings):
    celery_app = app.extensions["celery"]
    celery_app.loader.import_default_modules()
    celery_app.tasks[INGEST_PULSES].delay([])
    celery_app.tasks[INGEST_PULSE].delay({})
    celery_app.tasks[PERSIST_PULSES].delay()

    assert queue_depth(settings.broker_url, "pulses") == 2
    assert queue_depth(settings.broker_url, "persist") == 1


def test_beat_schedules_the_persist_task_from_the_setting(app):
    schedule = app.extensions["celery"].conf.beat_schedule["persist-pulses"]
    assert schedule["task"] == PERSIST_PULSES
    assert schedule["schedule"] == settings_of(app).persist_crontab()
