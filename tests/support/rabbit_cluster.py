"""A private 3-node RabbitMQ cluster the test starts, kills a node of, and removes.

The machine's RabbitMQ node (rabbit@<host>, port 5672) is never touched: these nodes
have their own names (pi-q1..3@localhost), AMQP ports (5681-5683), distribution ports
(25681-25683), Erlang cookie, configuration, data and log directories, all in one
temporary directory. They register with the machine's epmd, as every node does.
The names and ports are fixed, so one such cluster runs on the machine at a time
(the tests' or the bench's): starting one removes whatever a previous run left.

Nodes are started with RabbitMQ's own `rabbitmq-server` script, not the distribution's
wrapper on PATH, which switches to the `rabbitmq` user and its HOME (and so its cookie
and the shared node's), and `rabbitmqctl` likewise, given the node and the cookie on
its command line.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support import services

DIR_PREFIX = "pi-rabbit-cluster-"
SCRIPTS_DIR = Path("/usr/lib/rabbitmq/bin")
START_TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class Node:
    """One node's identity: its Erlang name and the ports it listens on."""

    name: str
    amqp_port: int
    dist_port: int

    @property
    def short(self) -> str:
        return self.name.partition("@")[0]

    def url(self, vhost: str = "") -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/{vhost}"


NODES = (
    Node("pi-q1@localhost", 5681, 25681),
    Node("pi-q2@localhost", 5682, 25682),
    Node("pi-q3@localhost", 5683, 25683),
)


def rabbitmq_script(name: str) -> str | None:
    """RabbitMQ's script `name` to run as the current user, or None if not installed."""
    direct = SCRIPTS_DIR / name
    if direct.exists():
        return str(direct)
    return shutil.which(name)


def rabbitmq_server() -> str | None:
    """The `rabbitmq-server` script, or None if RabbitMQ is not installed."""
    return rabbitmq_script("rabbitmq-server")


def _port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def remove_leftovers(nodes: tuple[Node, ...], keep: Path) -> None:
    """Kill the nodes a crashed previous run left behind, and remove its directories.

    Only a process whose command line names such a directory (an Erlang VM's `-home`)
    is killed, found even if the run died before the node wrote its pid file; a port
    still taken afterwards belongs to something else, and is an error, not a target.
    """
    prefix = str(Path(tempfile.gettempdir()) / DIR_PREFIX).encode()
    for command_file in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            arguments = command_file.read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if any(arg.startswith(prefix) and arg != str(keep).encode() for arg in arguments):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(command_file.parent.name), signal.SIGKILL)
    for leftover in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*"):
        if leftover != keep:
            shutil.rmtree(leftover, ignore_errors=True)
    deadline = time.monotonic() + 15
    while (taken := [n for n in nodes if _port_in_use(n.amqp_port) or _port_in_use(n.dist_port)]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
    if taken:
        raise RuntimeError(f"ports of {[n.name for n in taken]} are taken by another process")


class RabbitCluster:
    """Three RabbitMQ nodes clustered with `join_cluster`, their quorum queues replicated."""

    def __init__(self, nodes: tuple[Node, ...] = NODES) -> None:
        self.nodes = nodes
        self.dir = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
        self.cookie = secrets.token_hex(16)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def broker_url(self, vhost: str = "") -> str:
        """BROKER_URL listing every node (`;`), the first node first."""
        return ";".join(node.url(vhost) for node in self.nodes)

    def start(self) -> None:
        """Start the nodes (in parallel), join the second and third to the first."""
        remove_leftovers(self.nodes, keep=self.dir)
        cookie_file = self.dir / ".erlang.cookie"
        cookie_file.write_text(self.cookie)
        cookie_file.chmod(0o400)
        (self.dir / "enabled_plugins").write_text("[].\n")  # no management plugin
        for node in self.nodes:
            self._start_node(node)
        for node in self.nodes:
            self.wait_for_node(node)
        first, *others = self.nodes
        for node in others:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app")
            self.ctl(node, "await_startup", "--timeout", str(START_TIMEOUT_SECONDS))

    def wait_for_node(self, node: Node) -> None:
        """Return once the node wrote its pid file and RabbitMQ runs on it."""
        self.ctl(node, "wait", str(self.pid_file(node)), "--timeout", str(START_TIMEOUT_SECONDS))

    def restart(self, node: Node) -> None:
        """Start a killed node again on its data: it rejoins the cluster, its queues come back."""
        self.pid_file(node).unlink(missing_ok=True)  # the dead VM's: `wait` would read it
        self._start_node(node)
        self.wait_for_node(node)
        self.ctl(node, "await_startup", "--timeout", str(START_TIMEOUT_SECONDS))

    def _start_node(self, node: Node) -> None:
        node_dir = self.dir / node.short
        node_dir.mkdir(exist_ok=True)
        config = node_dir / "rabbitmq.conf"
        # Our own configuration: the machine's /etc/rabbitmq/rabbitmq.conf binds 5672.
        config.write_text(f"listeners.tcp.local = 127.0.0.1:{node.amqp_port}\n")
        env = {
            **os.environ,
            "HOME": str(self.dir),  # where Erlang reads the cookie
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_NODE_PORT": str(node.amqp_port),
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_MNESIA_BASE": str(node_dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(node_dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_PID_FILE": str(self.pid_file(node)),
        }
        server = rabbitmq_server()
        if server is None:
            raise RuntimeError("rabbitmq-server is not installed")
        with (node_dir / "stdout.log").open("ab") as log:
            self.processes[node.name] = subprocess.Popen(
                [server],
                cwd=self.dir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def pid_file(self, node: Node) -> Path:
        return self.dir / node.short / "pid"

    def os_pid(self, node: Node) -> int:
        """The OS pid of the node's Erlang VM (the script's child), as the node wrote it."""
        return int(self.pid_file(node).read_text().strip())

    def ctl(self, node: Node, *args: str, timeout: float = START_TIMEOUT_SECONDS + 30) -> str:
        """`rabbitmqctl -n <node> <args>` with this cluster's cookie; its output."""
        completed = subprocess.run(
            self.ctl_command(node, *args), capture_output=True, text=True, timeout=timeout, check=False
        )
        if completed.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} on {node.name}: {completed.stderr}{completed.stdout}"
            )
        return completed.stdout

    def ctl_options(self, node: Node) -> list[str]:
        """The options that point `rabbitmqctl` at `node`."""
        return ["-n", node.name, "--erlang-cookie", self.cookie]

    def ctl_command(self, node: Node, *args: str) -> list[str]:
        # As the current user (the wrapper's `rabbitmq` user cannot read our pid files).
        return [rabbitmq_script("rabbitmqctl") or "rabbitmqctl", *self.ctl_options(node), *args]

    def add_vhost(self, vhost: str) -> None:
        """A virtual host guest may use (on the first node: the cluster shares it)."""
        first = self.nodes[0]
        self.ctl(first, "add_vhost", vhost)
        self.ctl(first, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")

    def leader_of(self, queue: str, vhost: str, asking: Node) -> Node:
        """The node leading quorum queue `queue`, as `asking` reports it."""
        rows = services.rabbitmqctl_rows(
            "list_queues", vhost, "name", "leader", options=self.ctl_options(asking)
        )
        leaders = {name: leader for name, leader in rows}
        return next(node for node in self.nodes if node.name == leaders[queue])

    def kill(self, node: Node) -> None:
        """SIGKILL the node's Erlang VM: no shutdown, its connections cut, as a host lost."""
        os.kill(self.os_pid(node), signal.SIGKILL)
        self.processes[node.name].wait(30)

    def stop(self) -> None:
        """SIGTERM every node's process group, SIGKILL what is left, remove the directory."""
        running = [process for process in self.processes.values() if process.poll() is None]
        for process in running:
            os.killpg(process.pid, signal.SIGTERM)  # the script stops its node cleanly
        for process in running:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RabbitCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
