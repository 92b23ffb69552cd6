"""A private Redis Cluster the tests start and kill: 3 masters, 3 replicas, on this machine.

Six `redis-server --cluster-enabled yes` processes on ports 7101-7106 (kept apart from
the shared Redis and the private single servers of `private_redis.py`), each in its
own directory under one temporary directory, joined by `redis-cli --cluster create
--cluster-replicas 1`. `stop` kills every process it started, whatever state the
start reached, and removes the directory. No persistence (`--save ""`, no AOF): a
killed master's data survives only on its replica, which is what a failover test asks.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

PORTS = tuple(range(7101, 7107))
# Failover within a second or two of a master's death (the default is 15 s).
NODE_TIMEOUT_MS = 2000


class RedisClusterError(RuntimeError):
    """The private cluster could not be started."""


class PrivateRedisCluster:
    """Six cluster-enabled redis-server processes joined into 3 masters + 3 replicas."""

    def __init__(self, ports: tuple[int, ...] = PORTS) -> None:
        self.ports = ports
        self.dir = Path(tempfile.mkdtemp(prefix="redis-cluster-"))
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """The REDIS_URL naming this cluster (every node, as a deployment would list them)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def client(self, port: int) -> Redis:
        """A plain client of one node (for CLUSTER INFO, INFO, DEBUG...)."""
        return Redis(port=port, socket_connect_timeout=1, socket_timeout=5)

    def start(self, timeout: float = 60) -> None:
        """Start the six nodes, create the cluster and wait until every node says ok."""
        for port in self.ports:
            if _answers(port):
                raise RedisClusterError(f"port {port} is taken (another test run's cluster?)")
        try:
            for port in self.ports:
                self._start_node(port)
            deadline = time.monotonic() + timeout
            for port in self.ports:
                self._wait(lambda p=port: _answers(p), deadline, f"node {port} to answer")
            create = subprocess.run(
                [
                    shutil.which("redis-cli") or "/usr/bin/redis-cli",
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{port}" for port in self.ports),
                    "--cluster-replicas",
                    "1",
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            if create.returncode != 0:
                raise RedisClusterError(f"redis-cli --cluster create failed: {create.stdout}{create.stderr}")
            self._wait(self.healthy, deadline, "cluster_state:ok on every node")
        except BaseException:
            self.stop()
            raise

    def restart(self, port: int, timeout: float = 60) -> None:
        """Start a killed node again: its nodes.conf makes it rejoin (a replica, when a
        failover promoted another node meanwhile); return once the cluster is ok."""
        self._start_node(port)
        self._wait(self.healthy, time.monotonic() + timeout, f"node {port} to rejoin")

    def _start_node(self, port: int) -> None:
        node_dir = self.dir / str(port)
        node_dir.mkdir(exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [
                shutil.which("redis-server") or "/usr/bin/redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(node_dir),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--maxmemory-policy",
                "noeviction",
                "--logfile",
                str(node_dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _wait(self, ready, deadline: float, what: str) -> None:
        while time.monotonic() < deadline:
            for port, process in self.processes.items():
                if process.poll() is not None:
                    raise RedisClusterError(
                        f"node {port} exited with {process.returncode}: {self.log_tail(port)}"
                    )
            if ready():
                return
            time.sleep(0.1)
        raise RedisClusterError(f"timed out waiting for {what}")

    def healthy(self) -> bool:
        """Whether every live node reports cluster_state:ok, knows of 3 masters with slots
        and of every node, and every replica is in sync with its master."""
        for port, process in self.processes.items():
            if process.poll() is not None:
                continue
            try:
                info = self.client(port).cluster("info")
            except RedisError:
                return False
            if info.get("cluster_state") != "ok" or int(info.get("cluster_size", 0)) != 3:
                return False
            if int(info.get("cluster_known_nodes", 0)) != len(self.ports):
                return False
            # A replica still in its first sync confirms no write (WAIT answers 0).
            replication = self.client(port).info("replication")
            if replication["role"] == "slave" and replication.get("master_link_status") != "up":
                return False
        return True

    def masters(self) -> list[int]:
        """The ports of the live masters, as the live nodes see them."""
        return sorted(port for port in self.live_ports() if self.role(port) == "master")

    def replicas(self) -> list[int]:
        """The ports of the live replicas."""
        return sorted(port for port in self.live_ports() if self.role(port) == "slave")

    def live_ports(self) -> list[int]:
        return [port for port, process in self.processes.items() if process.poll() is None]

    def role(self, port: int) -> str:
        return str(self.client(port).info("replication")["role"])

    def replica_of(self, master_port: int) -> int:
        """The port of the replica following `master_port`."""
        for port in self.replicas():
            if int(self.client(port).info("replication")["master_port"]) == master_port:
                return port
        raise RedisClusterError(f"no replica follows {master_port}")

    def kill(self, port: int) -> None:
        """SIGKILL one node: no shutdown, like a crashed host."""
        process = self.processes[port]
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)

    def pause(self, port: int) -> None:
        """SIGSTOP one node: it holds its connections and answers nothing."""
        self.processes[port].send_signal(signal.SIGSTOP)

    def resume(self, port: int) -> None:
        """SIGCONT a paused node."""
        self.processes[port].send_signal(signal.SIGCONT)

    def flush(self) -> None:
        """FLUSHALL on every live master (the cluster is the test's own)."""
        for port in self.masters():
            self.client(port).flushall()

    def stop(self) -> None:
        """Kill every node started (paused ones too) and remove the directory."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.send_signal(signal.SIGKILL)
                process.wait(10)
        self.processes.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, port: int, lines: int = 20) -> str:
        log = self.dir / str(port) / "redis.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""

    def __enter__(self) -> PrivateRedisCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _answers(port: int) -> bool:
    try:
        return bool(Redis(port=port, socket_connect_timeout=0.5).ping())
    except RedisError:
        return False
