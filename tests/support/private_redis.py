"""A private `redis-server` the test starts, kills and restarts (the machine's stays up).

On its own port (6391-6399, kept apart from every other test run's Redis db) and its
own temporary directory, with the append-only file on, as `docker-compose.yml` runs
production's Redis: a restart must bring back every counted pulse and dedupe key.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError

PORTS = range(6391, 6400)


def _port_is_free(port: int) -> bool:
    try:
        Redis(port=port, socket_connect_timeout=0.5).ping()
    except RedisConnectionError:
        return True
    return False


class PrivateRedis:
    """One redis-server process with AOF persistence in a temporary directory."""

    def __init__(self) -> None:
        self.port = next((port for port in PORTS if _port_is_free(port)), None)
        if self.port is None:
            raise RuntimeError(f"no free port for a private redis-server in {PORTS}")
        self.dir = Path(tempfile.mkdtemp(prefix=f"redis-{self.port}-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20) -> None:
        """Start the server (loading its AOF, if any) and wait until it answers.

        The port range is shared with every other test run on the machine: when
        another run's server took the port first (ours then fails to bind, but theirs
        answers the ping), the first start moves on to another free port.
        """
        first_start = self.process is None
        for _ in PORTS:
            if self._start_once(timeout):
                return
            if not first_start:
                break
            self.port = next((port for port in PORTS if _port_is_free(port)), None)
            if self.port is None:
                break
        raise RuntimeError(f"no free port for a private redis-server in {PORTS}")

    def _start_once(self, timeout: float) -> bool:
        """Start on self.port; False if another process's redis-server answers there."""
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "/usr/bin/redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
                # Redis 7 allocates ~24 KB of latency histogram the first time each command
                # runs: on this almost empty server that is the memory a full-Redis test
                # leaves a batch, and what the code under test does would decide nothing.
                "--latency-tracking",
                "no",
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if "Address already in use" in self.log_tail():
                    return False
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {self.log_tail()}")
            try:
                client.ping()
                if client.info("server")["process_id"] == self.process.pid:
                    return True
                self.kill()  # not ours: the port was taken between the check and the start
                return False
            except (RedisConnectionError, BusyLoadingError):
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on {self.port} did not answer in {timeout}s: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the server: no shutdown, no final AOF rewrite, like a crashed host process."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """Kill the server and remove its directory."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        log = self.dir / "redis.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
