"""scripts/ensure-services itself, on a machine that has neither Debian services nor Docker.

The real script runs with a PATH holding only bash, python3 and dirname (no
pg_ctlcluster, redis-server, rabbitmq-server; in one case the docker client without an
engine, as on this machine), and with the three URLs pointing at free ports on
127.0.0.1, so the machine's real services are never involved: it must exit 1 with one
message per service, and start nothing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procfile import free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "ensure-services"


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def listener() -> Iterator[int]:
    """A port on 127.0.0.1 that answers, standing in for a service already running."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def bare_path(tmp_path: Path, *extra: str) -> str:
    """A PATH directory with only what the wrapper needs (and `extra` commands)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # The interpreter the venv was made from: the script must run without .venv.
    (bin_dir / "python3").symlink_to(os.path.realpath(sys.executable))
    for command in ("bash", "dirname", *extra):
        found = shutil.which(command)
        if found is None:
            pytest.skip(f"{command} is not installed")
        (bin_dir / command).symlink_to(found)
    for absent in ("pg_ctlcluster", "redis-server", "rabbitmq-server", *({"docker"} - set(extra))):
        assert not (bin_dir / absent).exists()
    return str(bin_dir)


def run_script(path: str, environ: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), **environ}
    return subprocess.run(
        [str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("client", [(), ("docker",)], ids=["no-docker", "docker-client-without-engine"])
def test_without_debian_services_or_docker_it_says_exactly_how_and_starts_nothing(tmp_path, client):
    if client and subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0:
        pytest.skip("a Docker engine answers here")
    ports = {"DATABASE_URL": free_port(), "REDIS_URL": free_port(), "BROKER_URL": free_port()}
    environ = {
        "DATABASE_URL": f"postgresql+psycopg2://postgres@127.0.0.1:{ports['DATABASE_URL']}/pulse_ingestor",
        "REDIS_URL": f"redis://127.0.0.1:{ports['REDIS_URL']}/0",
        "BROKER_URL": f"amqp://guest:guest@127.0.0.1:{ports['BROKER_URL']}//",
    }
    result = run_script(bare_path(tmp_path, *client), environ)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    messages = result.stderr.split("ensure-services: ")[1:]
    assert len(messages) == 3, result.stderr
    expected = [
        ("PostgreSQL", "DATABASE_URL", "postgresql"),
        ("Redis", "REDIS_URL", "redis-server"),
        ("RabbitMQ", "BROKER_URL", "rabbitmq-server"),
    ]
    for message, (name, setting, package) in zip(messages, expected, strict=True):
        port = ports[setting]
        assert message.startswith(f"{name} does not answer on 127.0.0.1:{port} ({setting} points there)"), (
            message
        )
        assert f"sudo apt-get install {package} " in message
        assert "start a Docker engine" in message
        assert f"point {setting} at a {name} that runs" in message
    assert "command not found" not in result.stderr and "Traceback" not in result.stderr
    assert not any(answers(port) for port in ports.values())


def test_a_service_already_answering_is_left_alone_and_only_the_others_are_named(tmp_path, listener):
    database_port, broker_port = free_port(), free_port()
    environ = {
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{database_port}/pulse_ingestor",
        "REDIS_URL": f"redis://127.0.0.1:{listener}/0",
        "BROKER_URL": f"amqp://guest:guest@127.0.0.1:{broker_port}//",
    }
    result = run_script(bare_path(tmp_path), environ)
    assert result.returncode == 1
    assert result.stderr.count("ensure-services: ") == 2
    assert f"127.0.0.1:{database_port}" in result.stderr and f"127.0.0.1:{broker_port}" in result.stderr
    assert "Redis" not in result.stderr


def test_for_tests_checks_what_the_test_suite_uses(tmp_path, listener):
    database_port = free_port()
    environ = {
        # What the ingestor would use answers; what the tests use does not.
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{listener}/pulse_ingestor",
        "TEST_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{database_port}/pulse_ingestor_test",
        "TEST_REDIS_URL": f"redis://127.0.0.1:{listener}/15",
    }
    result = run_script(bare_path(tmp_path), environ, "--for-tests")
    assert (
        f"PostgreSQL does not answer on 127.0.0.1:{database_port} (TEST_DATABASE_URL points there)"
        in result.stderr
    )
    # The tests' broker is fixed at 127.0.0.1:5672: this machine's real one answers there or not,
    # and with rabbitmq-server off PATH nothing would start it; only its message may differ.
    assert "Redis" not in result.stderr
    assert result.returncode == 1


def test_a_remote_service_is_reported_and_never_started(tmp_path, listener):
    environ = {
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{listener}/pulse_ingestor",
        "REDIS_URL": "redis://redis.invalid:6379/0",
        "BROKER_URL": f"amqp://guest:guest@127.0.0.1:{listener}//",
    }
    result = run_script(bare_path(tmp_path), environ)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "ensure-services: Redis does not answer on redis.invalid:6379 (REDIS_URL points there). That host is not "
        "this machine, so nothing here starts it: start it there, or point REDIS_URL at a Redis that runs."
    )
