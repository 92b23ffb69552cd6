"""A Celery app for `celery -A tests.support.crash_worker worker` that dies mid-flush.

The project's app, with one hook: the first flush to reach `CRASH_POINT` kills the
worker's whole process group with SIGKILL (main process and pool children, as when
its machine dies), so a test can watch a real worker, a real broker redelivery and
the next run cope with a flush cut at that point:

- `before_commit`: the live window is already renamed to a snapshot, nothing is
  written to PostgreSQL yet;
- `after_commit`: the snapshot's sums and its batch id are committed, DONE (the
  snapshot's expiry, its registry entry marked committed) has not run yet.

`CRASH_MARKER` names a file created when the hook fires (exclusively, so only the
first crossing dies): a redelivered persist task in a restarted worker runs through.
Test code only; the project has no crash hook.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from ingestor import create_app

CRASH_POINTS = ("before_commit", "after_commit")
DEAD_RUN_LOCK_SECONDS = 3


def _die_once(marker: Path) -> None:
    try:
        marker.open("x").close()
    except FileExistsError:
        return
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _install(persister: Any, point: str, marker: Path) -> None:
    if point not in CRASH_POINTS:
        raise ValueError(f"CRASH_POINT must be one of {CRASH_POINTS}, got {point!r}")
    write = persister._write

    def write_then_maybe_die(*args: Any, **kwargs: Any) -> bool:
        if point == "before_commit":
            _die_once(marker)
        committed = write(*args, **kwargs)
        if point == "after_commit":
            _die_once(marker)
        return committed

    persister._write = write_then_maybe_die
    # The dead run's flush lock outlives it until it expires: a short expiry here keeps
    # the test short. The next worker has the project's own, and must wait it out.
    persister._lock_timeout = DEAD_RUN_LOCK_SECONDS


_flask_app = create_app()
_install(
    _flask_app.extensions["pulses"].persister, os.environ["CRASH_POINT"], Path(os.environ["CRASH_MARKER"])
)
celery = _flask_app.extensions["celery"]
