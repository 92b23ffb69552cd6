"""Make PostgreSQL, Redis and RabbitMQ answer before `make run` / `make test`, or say how.

For each service the ingestor (or, with --for-tests, the test suite) is configured to
use, in order:

1. its port answers: it is used as it is, nothing is touched;
2. it is not on this machine (the URL names another host): it is reported, never started;
3. the Debian package's start command exists: the installed service is started;
4. a Docker engine answers: only that service of docker-compose.yml is started, its
   healthcheck awaited;
5. otherwise: one message naming the service, its port, the setting that points there,
   and the two ways to get it.

Every service is planned before anything starts, so a machine missing one service gets
the message and no half-started stack. Nothing is ever stopped or reconfigured: the
only commands run are start commands, and compose is told not to recreate a container.

This runs before .venv exists: standard library only, any python3. The probes (does a
port answer, does a command exist, does a Docker engine answer) are passed in, so the
decisions are tested without touching the machine's services.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", ""})
DEFAULT_HOST = "127.0.0.1"
# How long a started service gets to open its port (RabbitMQ takes the longest).
START_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class Service:
    """One backing service and the ways this machine may start it."""

    name: str
    # Its service name in docker-compose.yml, which publishes it on 127.0.0.1:default_port.
    compose_service: str
    default_port: int
    # The Debian package, and the command whose presence says it is installed.
    debian_package: str
    debian_command: str


POSTGRESQL = Service("PostgreSQL", "postgres", 5432, "postgresql", "pg_ctlcluster")
REDIS = Service("Redis", "redis", 6379, "redis-server", "redis-server")
RABBITMQ = Service("RabbitMQ", "rabbitmq", 5672, "rabbitmq-server", "rabbitmq-server")
SERVICES = (POSTGRESQL, REDIS, RABBITMQ)

# The variables that point each service elsewhere, first set one wins: the same names
# and order as ingestor/settings.py (Settings and FALLBACK_VARIABLES), whose defaults
# are 127.0.0.1 on the default ports. tests/unit/test_ensure_services.py keeps them equal.
APP_VARIABLES: dict[Service, tuple[str, ...]] = {
    POSTGRESQL: ("DATABASE_URL",),
    REDIS: ("REDIS_URL", "REDISCLOUD_URL"),
    RABBITMQ: ("BROKER_URL", "CLOUDAMQP_URL", "RABBITMQ_URL"),
}
# What tests/support/services.py reads: the tests' broker is always 127.0.0.1:5672.
TEST_VARIABLES: dict[Service, tuple[str, ...]] = {
    POSTGRESQL: ("TEST_DATABASE_URL",),
    REDIS: ("TEST_REDIS_URL",),
    RABBITMQ: (),
}


class ConfigurationError(ValueError):
    """A setting holds something that is not a URL with a usable host and port."""


class StartError(RuntimeError):
    """A start command failed, or the service did not open its port in time."""


@dataclass(frozen=True)
class Target:
    """Where a service is expected, and the setting that points it there."""

    service: Service
    host: str
    port: int
    # The variable that points the service elsewhere (None: the tests' fixed broker)...
    setting: str | None
    # ...and whether it is set (False: the default, 127.0.0.1 on the default port).
    configured: bool = False

    @property
    def local(self) -> bool:
        return self.host in LOCAL_HOSTS or self.host.startswith("127.")

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def origin(self) -> str:
        """Why the service is expected there, for messages."""
        if self.configured:
            return f"{self.setting} points there"
        if self.setting:
            return f"the default; {self.setting} points elsewhere"
        return "where the tests always expect it"


def resolve_target(service: Service, variables: Sequence[str], environ: Mapping[str, str]) -> Target:
    """Where `service` is expected, from the first of `variables` set and non-empty."""
    for name in variables:
        url = environ.get(name)
        if not url:
            continue
        try:
            parts = urlsplit(url)
            port = parts.port or service.default_port
        except ValueError as error:
            raise ConfigurationError(f"{name} is not a usable URL ({error}): {url!r}") from None
        if not parts.scheme:
            raise ConfigurationError(f"{name} is not a URL (no scheme such as postgresql://): {url!r}")
        # A URL without a host (postgresql:///db: a Unix socket) is this machine.
        return Target(service, parts.hostname or DEFAULT_HOST, port, name, configured=True)
    return Target(service, DEFAULT_HOST, service.default_port, variables[0] if variables else None)


@dataclass(frozen=True)
class Machine:
    """The probes the plan is built from; the real ones are in `real_machine()`."""

    port_answers: Callable[[str, int], bool]
    command_exists: Callable[[str], bool]
    docker_answers: Callable[[], bool]


Action = Literal["use", "debian", "compose", "fail"]


@dataclass(frozen=True)
class Step:
    """What to do about one service: use it as it is, start it (debian / compose), or fail."""

    target: Target
    action: Action
    message: str = ""


def plan(targets: Sequence[Target], machine: Machine) -> list[Step]:
    """One step per target; probes the machine only as far as each decision needs."""
    docker: list[bool] = []  # `docker info` is slow when no engine answers: ask once

    def docker_answers() -> bool:
        if not docker:
            docker.append(machine.docker_answers())
        return docker[0]

    steps = []
    for target in targets:
        service = target.service
        if machine.port_answers(target.host, target.port):
            steps.append(Step(target, "use"))
        elif not target.local:
            steps.append(Step(target, "fail", remote_message(target)))
        elif machine.command_exists(service.debian_command):
            steps.append(Step(target, "debian"))
        elif target.port == service.default_port and docker_answers():
            steps.append(Step(target, "compose"))
        else:
            steps.append(Step(target, "fail", unavailable_message(target)))
    return steps


def remote_message(target: Target) -> str:
    """The message for a service on another host that does not answer."""
    return (
        f"{target.service.name} does not answer on {target.address} ({target.origin()}). "
        f"That host is not this machine, so nothing here starts it: start it there, "
        f"or point {target.setting} at a {target.service.name} that runs."
    )


def unavailable_message(target: Target) -> str:
    """The one message for a local service that is down and that this machine cannot start."""
    service = target.service
    published = f"127.0.0.1:{service.default_port}"
    if target.port == service.default_port:
        docker = (
            "start a Docker engine (Docker Desktop, or Debian's docker.io): this command then runs "
            f"`docker compose up -d --wait {service.compose_service}`, published on {published};"
        )
    else:
        docker = (
            f"start a Docker engine and point {target.setting} at {published}, where "
            f"docker-compose.yml publishes {service.name};"
        )
    lines = [
        f"{service.name} does not answer on {target.address} ({target.origin()}), "
        "and this machine has no way to start it. Either:",
        f"  - install the Debian package: sudo apt-get install {service.debian_package}"
        f" (this command then starts it with {service.debian_command}, found on PATH);",
        f"  - or {docker}",
    ]
    if target.setting:
        lines.append(f"  - or point {target.setting} at a {service.name} that runs.")
    return "\n".join(lines)


def real_machine() -> Machine:
    """The probes against this machine."""
    return Machine(port_answers=port_answers, command_exists=command_exists, docker_answers=docker_answers)


def port_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts a TCP connection on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def command_exists(command: str) -> bool:
    """Whether `command` is on PATH (the same lookup that then runs it)."""
    return shutil.which(command) is not None


def docker_answers() -> bool:
    """Whether a Docker engine answers (`docker info` succeeds), not just a client installed."""
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def debian_command(target: Target) -> list[str]:
    """The Debian start command of the project's development/CI machines for `target`."""
    service = target.service
    if service is POSTGRESQL:
        clusters = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
        if not clusters:
            raise StartError(
                "PostgreSQL is installed but has no cluster in /etc/postgresql: "
                "create one with `sudo pg_createcluster <version> main`."
            )
        return ["pg_ctlcluster", "--skip-systemctl-redirect", clusters[0], "main", "start"]
    if service is REDIS:
        # A scratch Redis for development: no persistence, logs beside the package's own.
        return [
            "redis-server",
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "-::1",
            "--port",
            str(target.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            "/var/lib/redis",
            "--logfile",
            "/var/log/redis/ci.log",
        ]
    return ["rabbitmq-server", "-detached"]


def compose_command(target: Target) -> list[str]:
    """Start only `target`'s service from docker-compose.yml and wait for its healthcheck.

    --no-recreate: a container of it that exists (stopped, or from an older
    docker-compose.yml) is started as it is, never replaced.
    """
    return [
        "docker",
        "compose",
        "--file",
        str(COMPOSE_FILE),
        "up",
        "--detach",
        "--wait",
        "--no-recreate",
        target.service.compose_service,
    ]


def compose_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment for `docker compose up SERVICE`: `environ`, with a JWT_SECRET_KEY."""
    env = dict(environ)
    # Compose interpolates the whole file, and the ingestor services require
    # JWT_SECRET_KEY (`${JWT_SECRET_KEY:?...}`, empty counts as unset), which would stop
    # even `up postgres`. The backing services never read it.
    if not env.get("JWT_SECRET_KEY"):
        env["JWT_SECRET_KEY"] = "unused-by-the-backing-services"
    return env


def start(step: Step, environ: Mapping[str, str], timeout: float = START_TIMEOUT_SECONDS) -> None:
    """Run the step's start command, then wait until the service's port answers."""
    target = step.target
    if step.action == "debian":
        command, env = debian_command(target), dict(environ)
    else:
        command, env = compose_command(target), compose_environment(environ)
    logger.info("starting %s: %s", target.service.name, " ".join(command))
    try:
        result = subprocess.run(command, env=env, check=False)
    except OSError as error:
        raise StartError(f"could not run {command[0]} to start {target.service.name}: {error}") from None
    if result.returncode != 0:
        # Its own output is just above; `up --wait` needs the Compose v2 plugin.
        hint = ""
        if step.action == "compose":
            hint = " It needs Docker Compose v2: does `docker compose version` answer?"
        raise StartError(
            f"starting {target.service.name} failed (`{' '.join(command)}` exited {result.returncode}).{hint}"
        )
    deadline = time.monotonic() + timeout
    while not port_answers(target.host, target.port):
        if time.monotonic() > deadline:
            raise StartError(
                f"{target.service.name} was started but does not answer on {target.address} "
                f"({target.origin()}) after {timeout:.0f}s: check the port it listens on."
            )
        time.sleep(0.5)
    logger.info("%s answers on %s", target.service.name, target.address)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env file (as flask and honcho read it; comments, quotes, export)."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.removeprefix("export ").split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = value.split(" #", 1)[0].strip()
        values[key.strip()] = value
    return values


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of scripts/ensure-services; 0 when every service answers."""
    parser = argparse.ArgumentParser(prog="ensure-services", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--for-tests",
        action="store_true",
        help="check what the test suite uses (TEST_DATABASE_URL, TEST_REDIS_URL), not the ingestor's settings",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="ensure-services: %(message)s", stream=sys.stderr)
    if environ is None:
        environ = os.environ
    if args.for_tests:
        variables, settings = TEST_VARIABLES, dict(environ)
    else:
        # The ingestor reads .env too (flask, honcho); the environment wins, as for flask.
        variables, settings = APP_VARIABLES, {**read_env_file(ROOT / ".env"), **environ}
    try:
        targets = [resolve_target(service, variables[service], settings) for service in SERVICES]
    except ConfigurationError as error:
        logger.error("%s", error)
        return 2
    steps = plan(targets, real_machine())
    failures = [step.message for step in steps if step.action == "fail"]
    for message in failures:
        logger.error("%s", message)
    if failures:
        return 1
    try:
        for step in steps:
            if step.action != "use":
                start(step, environ)
    except StartError as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
