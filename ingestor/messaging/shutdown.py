"""Warm shutdown when SIGTERM reaches every process of the worker, not just the main one.

Heroku-style platforms, honcho and `kill -- -PGID` signal the whole process group.
A prefork pool process dies on SIGTERM by default, so the batch in hand would be cut
off mid-way: not lost (late acks requeue it, its dedupe keys make the redelivery
count once), but redone by the next worker. With this, a pool process lets the first
SIGTERM pass: the main process, which got it too, runs Celery's warm shutdown, waits
for the task in hand, then closes the pool. The next SIGTERM (Celery's cold shutdown
terminating the pool, or an impatient operator) goes to billiard's own handler and
ends the process as before; the platform's SIGKILL after its grace period always does.

billiard installs its SIGTERM handler after `worker_process_init`, so ours goes in
at the first task the pool process runs (`task_prerun`), once per process.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

from celery.signals import task_prerun

_pool_process = {"pid": 0, "installed": False}


def finish_task_on_group_sigterm() -> None:
    """Call in a pool process (`worker_process_init`): its tasks survive the first SIGTERM."""
    _pool_process.update(pid=os.getpid(), installed=False)
    task_prerun.connect(_install_once, weak=False, dispatch_uid="ingestor-finish-task-on-sigterm")


def _install_once(**_: object) -> None:
    # Only in a prefork pool process, from its main thread: never in a worker's main
    # process (solo pool), whose SIGTERM handler *is* the warm shutdown.
    if _pool_process["installed"] or _pool_process["pid"] != os.getpid():
        return
    if threading.current_thread() is not threading.main_thread():
        return
    _pool_process["installed"] = True
    billiard_handler = signal.getsignal(signal.SIGTERM)

    def _let_first_sigterm_pass(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, billiard_handler)

    signal.signal(signal.SIGTERM, _let_first_sigterm_pass)
