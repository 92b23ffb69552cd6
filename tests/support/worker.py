"""A real `celery -A ingestor worker` in a subprocess, and a way to wait for it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from celery import Celery
from kombu import Connection

from ingestor.settings import Settings
from tests.support import services
from tests.support.services import RABBITMQ_VHOST, settings_env

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """One worker process group (main process and pool children) the test controls."""

    def __init__(
        self,
        settings: Settings,
        name: str,
        concurrency: int = 2,
        queues: str | None = None,
        app: str = "ingestor",
        extra_env: dict[str, str] | None = None,
    ):
        self.settings = settings
        self.name = f"{name}@test"
        self.concurrency = concurrency
        self.queues = queues
        self.app = app
        self.extra_env = extra_env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.mkstemp(prefix=f"worker-{name}-", suffix=".log")[1])

    def start(self, control: Celery, timeout: float = 60) -> None:
        """Start the worker and return once it answers a ping."""
        env = {**os.environ, **settings_env(self.settings), "PYTHONUNBUFFERED": "1", **self.extra_env}
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            self.app,
            "worker",
            "-n",
            self.name,
            "-c",
            str(self.concurrency),
            "--loglevel=INFO",
            "--without-mingle",
            "--without-gossip",
        ]
        if self.queues:  # default: every queue the project's worker consumes
            command += ["-Q", self.queues]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.tail()}")
            if control.control.ping(destination=[self.name], timeout=1):
                return
        raise RuntimeError(f"worker did not answer a ping in {timeout}s:\n{self.tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        """Send `sig` to the whole process group and wait for the main process."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        os.killpg(self.process.pid, sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(timeout)

    def tail(self, lines: int = 60) -> str:
        """The end of the worker's log, for failure messages."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def queue_depth(broker_url: str, queue: str) -> int:
    """Messages ready in `queue` (not counting those delivered but unacked)."""
    with Connection(broker_url) as connection:
        _, count, _ = connection.default_channel.queue_declare(queue=queue, passive=True)
        return count


def wait_until_idle(
    control: Celery, worker: WorkerProcess, queues: tuple[str, ...], timeout: float = 90
) -> None:
    """Return once the queues are empty and the worker holds no task, twice in a row."""
    deadline = time.monotonic() + timeout
    idle_in_a_row = 0
    while time.monotonic() < deadline:
        ready = sum(queue_depth(worker.settings.broker_url, queue) for queue in queues)
        inspect = control.control.inspect(destination=[worker.name], timeout=2)
        held = [inspect.active(), inspect.reserved(), inspect.scheduled()]
        answered = all(reply is not None for reply in held)
        busy = any(tasks for reply in held if reply for tasks in reply.values())
        if ready == 0 and answered and not busy:
            idle_in_a_row += 1
            if idle_in_a_row == 2:
                return
        else:
            idle_in_a_row = 0
        time.sleep(0.2)
    raise TimeoutError(f"worker still busy after {timeout}s:\n{worker.tail()}")


def queue_counts(queue: str) -> tuple[int, int]:
    """(ready, unacknowledged) messages of `queue` in the test vhost.

    The unacknowledged count needs `rabbitmqctl`: it is what tells a message held in
    a raw consumer's open batch from one counted and acked.
    """
    rows = services.rabbitmqctl_rows(
        "list_queues", RABBITMQ_VHOST, "name", "messages_ready", "messages_unacknowledged"
    )
    for name, ready, unacked in rows:
        if name == queue:
            return int(ready), int(unacked)
    raise LookupError(f"no queue {queue!r} in vhost {RABBITMQ_VHOST!r}")


def wait_until_settled(worker: WorkerProcess, queue: str, timeout: float = 90) -> None:
    """Return once `queue` has nothing ready and nothing unacked, twice in a row.

    For the raw queue, whose consumer is no Celery task: `wait_until_idle` cannot see
    the messages held in its open batch, but RabbitMQ counts them as unacked.
    """
    deadline = time.monotonic() + timeout
    settled_in_a_row = 0
    while time.monotonic() < deadline:
        if worker.process is not None and worker.process.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.process.returncode}:\n{worker.tail()}")
        settled_in_a_row = settled_in_a_row + 1 if queue_counts(queue) == (0, 0) else 0
        if settled_in_a_row == 2:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{queue} not settled after {timeout}s: {queue_counts(queue)}\n{worker.tail()}")
