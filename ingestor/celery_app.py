"""The Celery app, bound to the Flask app (Flask's own Celery pattern): the wiring.

Every task runs inside `app.app_context()`, so it finds the settings, the database
and Redis the same way a request does, and is timed and counted by outcome around
its run (`FlaskTask`). The configuration here is what makes the delivery guarantees
hold: late acks, reject on worker loss, publisher confirms. The consumer bootsteps
(the topology, the raw pulse queue) are registered here too.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery, Task
from celery.exceptions import Retry
from celery.signals import worker_init, worker_process_init
from flask import Flask

from ingestor.messaging import topology
from ingestor.messaging.amqp_transport import transport_for
from ingestor.messaging.connections import IngestorAMQP
from ingestor.messaging.consumer import DeclareTopology
from ingestor.messaging.serialization import EXACT_JSON, register_exact_json
from ingestor.messaging.shutdown import finish_task_on_group_sigterm
from ingestor.observability import metrics
from ingestor.pulses import task_names
from ingestor.pulses.raw_consumer import RawPulseConsumerStep
from ingestor.redis_store import check_redis_settings
from ingestor.settings import Settings, settings_of


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings derived from ours."""
    quorum = settings.broker_queue_type == topology.QUORUM
    return {
        "broker_url": settings.broker_url,
        # py-amqp reading the socket ahead, not 7 bytes at a time (see amqp_transport).
        "broker_transport": transport_for(settings.broker_url),
        "broker_connection_retry_on_startup": True,
        # Publishers wait for RabbitMQ to confirm each message is stored.
        "broker_transport_options": {"confirm_publish": True},
        # Ack only after the task ran: a worker dying mid-batch loses nothing...
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # ...and a task failing for good is rejected to the dead-letter queue
        # instead of acked away.
        "task_acks_on_failure_or_timeout": False,
        "task_ignore_result": True,
        # exact-json: the pulse tasks' bodies, relabelled for their pool process by
        # their request class (see messaging/serialization.py); producers send json.
        "accept_content": ["json", EXACT_JSON],
        "task_serializer": "json",
        "task_queues": topology.task_queues(settings.broker_queue_type),
        "task_create_missing_queues": False,
        "task_default_queue": topology.PULSES,
        "task_default_exchange": topology.PULSES,
        "task_default_routing_key": topology.PULSES,
        # Quorum queues: Celery 5.5+ sees their type (worker_detect_quorum_queues, on by
        # default), turns global QoS off (quorum queues refuse it) and carries countdown
        # retries through its native delayed delivery, which binds to topic exchanges.
        "task_default_exchange_type": "topic" if quorum else "direct",
        "task_default_queue_type": settings.broker_queue_type,
        "worker_detect_quorum_queues": True,
        "task_routes": {
            task_names.PERSIST_PULSES: {"queue": topology.PERSIST, "routing_key": topology.PERSIST},
            task_names.POPULATE_PULSES: {"queue": topology.POPULATE, "routing_key": topology.POPULATE},
        },
        "task_annotations": {
            name: {
                "max_retries": settings.task_max_retries,
                "retry_backoff_max": settings.task_retry_backoff_max_seconds,
            }
            for name in task_names.ALL
        },
        "worker_consumer": "ingestor.messaging.consumer:DeadLetteringConsumer",
        "imports": ("ingestor.pulses.tasks",),
        "timezone": "UTC",
        "enable_utc": True,
        "beat_schedule": {
            "persist-pulses": {
                "task": task_names.PERSIST_PULSES,
                "schedule": settings.persist_crontab(),
            },
        },
    }


def celery_init_app(app: Flask) -> Celery:
    """Create the Celery app of `app`, store it in `app.extensions["celery"]`."""
    register_exact_json()

    class FlaskTask(Task):
        """Runs the task in the app's context; times and counts every run by outcome.

        The one place task metrics are recorded (as Warehouse's task base class does):
        `ingestor_tasks_total{task, outcome}` and `ingestor_task_duration_seconds{task}`
        for every task, then the task's own `record_run` (a task option, see
        `pulses/tasks.py`), handed the outcome, what the run returned and how long it
        took, so a task body only does its work and returns what happened.
        """

        def record_run(self, outcome: str, result: Any, seconds: float) -> None:
            """What this task's own metrics make of a run (a task option overrides it)."""

        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                started = time.perf_counter()
                outcome, result = metrics.TASK_FAILURE, None
                try:
                    result = self.run(*args, **kwargs)
                    outcome = metrics.TASK_SUCCESS
                    return result
                except Retry:  # raised by autoretry and by the hold for memory
                    outcome = metrics.TASK_RETRY
                    raise
                finally:
                    seconds = time.perf_counter() - started
                    metrics.record_task(self.name, outcome, seconds)
                    self.record_run(outcome, result, seconds)

    celery_app = Celery(app.name, task_cls=FlaskTask, amqp=IngestorAMQP)
    celery_app.config_from_object(celery_config(settings_of(app)))
    # What the consumer steps read from their consumer (`c.app.flask_app`), as Celery's
    # own steps read `c.app`: the Flask app whose services they use.
    celery_app.flask_app = app
    celery_app.steps["consumer"].add(DeclareTopology)
    # The first version's bare JSON pulses, in batches (see pulses/raw_consumer.py).
    celery_app.steps["consumer"].add(RawPulseConsumerStep)
    celery_app.set_default()
    app.extensions["celery"] = celery_app

    @worker_init.connect(weak=False)
    def _check_redis(**_: object) -> None:
        # Before any task: a Redis that may evict keys would double-count pulses.
        check_redis_settings(app.extensions["redis"])

    @worker_process_init.connect(weak=False)
    def _forget_parent_connections(**_: object) -> None:
        app.extensions["database"].after_fork()
        finish_task_on_group_sigterm()

    return celery_app
