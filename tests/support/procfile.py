"""Running the Procfile's command lines for real: `sh -c LINE` in a process group of its own."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def procfile_commands() -> dict[str, str]:
    """{process name: command line} of the Procfile."""
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class ProcfileProcess:
    """One Procfile line run as a platform runs it, with its output in a log file."""

    def __init__(self, name: str, env: dict[str, str], cwd: Path = ROOT) -> None:
        self.name = name
        self.command = procfile_commands()[name]
        self.env = env
        self.cwd = cwd
        self.log = Path(tempfile.mkstemp(prefix=f"procfile-{name}-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ProcfileProcess:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                ["sh", "-c", self.command],
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def run(self, timeout: float = 120) -> int:
        """Run to completion (the release line); its exit code."""
        self.start()
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        finally:
            self.kill()

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def terminate(self, timeout: float = 60) -> bool:
        """SIGTERM the whole group (as honcho and Heroku do); True if every process left in time."""
        assert self.process is not None
        pgid = self.process.pid
        if _group_alive(pgid):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.process.poll()  # reap the shell, or the group never looks empty
            if not _group_alive(pgid):
                return True
            time.sleep(0.1)
        self.kill()
        return False

    def kill(self) -> None:
        """SIGKILL whatever is left of the group (cleanup)."""
        if self.process is None:
            return
        if _group_alive(self.process.pid):
            os.killpg(self.process.pid, signal.SIGKILL)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def json_lines(self, allowed: tuple[str, ...] = ()) -> list[dict]:
        """Every line of the output parsed as JSON: fails on any line that is not (or not in `allowed`)."""
        parsed = []
        for line in self.output().splitlines():
            if line.strip() and line not in allowed:
                try:
                    parsed.append(json.loads(line))
                except ValueError:
                    raise AssertionError(f"{self.name} wrote a line that is not JSON: {line!r}") from None
        return parsed
