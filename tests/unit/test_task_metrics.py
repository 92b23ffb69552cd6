"""The task base class times and counts every task run by outcome, in one place.

No worker and no broker: a task called directly runs through the same `__call__`
a worker's pool process calls (Celery calls a custom `__call__`), and nothing here
touches a service.
"""

from __future__ import annotations

import pytest
from celery.exceptions import Retry

from ingestor import create_app
from tests.support.services import settings_for_tests


def sample(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def celery_app():
    return create_app(settings_for_tests()).extensions["celery"]


def test_every_task_run_is_timed_and_counted_by_outcome(celery_app):
    seen: list[tuple[str, object]] = []

    def record_run(task, outcome, result, seconds):
        assert seconds >= 0
        seen.append((outcome, result))

    @celery_app.task(name="tests.succeeds", record_run=record_run)
    def succeeds() -> int:
        return 7

    @celery_app.task(name="tests.retries", record_run=record_run)
    def retries() -> None:
        raise Retry("the service may be back in a moment")

    @celery_app.task(name="tests.fails", record_run=record_run)
    def fails() -> None:
        raise ValueError("a bug")

    assert succeeds() == 7
    with pytest.raises(Retry):
        retries()
    with pytest.raises(ValueError):
        fails()
    with pytest.raises(ValueError):
        fails()

    assert sample("ingestor_tasks_total", task="tests.succeeds", outcome="success") == 1
    assert sample("ingestor_tasks_total", task="tests.retries", outcome="retry") == 1
    assert sample("ingestor_tasks_total", task="tests.fails", outcome="failure") == 2
    assert sample("ingestor_tasks_total", task="tests.fails", outcome="success") == 0
    assert sample("ingestor_task_duration_seconds_count", task="tests.fails") == 2
    # The task's own metrics get what the run returned (nothing when it raised).
    assert seen == [("success", 7), ("retry", None), ("failure", None), ("failure", None)]


def test_a_task_without_metrics_of_its_own_is_still_counted(celery_app):
    @celery_app.task(name="tests.plain", bind=True)
    def plain(self) -> str:
        return self.name

    assert plain() == "tests.plain"
    assert sample("ingestor_tasks_total", task="tests.plain", outcome="success") == 1
