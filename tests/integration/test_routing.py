"""The project's own publishers put each task on its queue (no worker runs here)."""

from __future__ import annotations

import pytest

from tests.support.worker import queue_depth

pytestmark = pytest.mark.usefixtures("clean_state")


def test_tasks_are_routed_to_their_queues(app, settings):
    celery_app = app.extensions["celery"]
    celery_app.loader.import_default_modules()
    celery_app.tasks["ingestor.ingest_pulses"].delay([])
    celery_app.tasks["ingestor.ingest_pulse"].delay({})
    celery_app.tasks["ingestor.persist_pulses"].delay()

    assert queue_depth(settings.broker_url, "pulses") == 2
    assert queue_depth(settings.broker_url, "persist") == 1


def test_beat_schedules_the_persist_task_from_the_setting(app):
    schedule = app.extensions["celery"].conf.beat_schedule["persist-pulses"]
    assert schedule["task"] == "ingestor.persist_pulses"
    assert schedule["schedule"] == app.config["SETTINGS"].persist_crontab()
