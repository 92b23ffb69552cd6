"""The deploy files agree with each other and with the settings (Docker cannot run here).

docker-compose.yml parses, runs each Procfile line, waits on healthy services, and
sets no variable the ingestor does not read; .env.example and the README document
every variable the settings read.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from ingestor.settings import FALLBACK_VARIABLES, Settings

ROOT = Path(__file__).resolve().parents[2]
# Read by gunicorn_config.py (web) and by prometheus-client, not by Settings.
PROCESS_VARIABLES = {"PORT", "WEB_CONCURRENCY", "PROMETHEUS_MULTIPROC_DIR"}
SETTINGS_VARIABLES = {field.name.upper() for field in fields(Settings)}
KNOWN_VARIABLES = (
    SETTINGS_VARIABLES | {v for names in FALLBACK_VARIABLES.values() for v in names} | PROCESS_VARIABLES
)
INGESTOR_SERVICES = {"migrate": "release", "web": "web", "worker": "worker", "beat": "beat"}


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_the_procfile_has_the_four_processes():
    processes = procfile()
    assert set(processes) == {"release", "web", "worker", "beat"}
    assert processes["release"] == "alembic upgrade head"
    assert processes["worker"].startswith("celery -A ingestor") and processes["worker"].endswith(" worker")
    assert processes["beat"].startswith("celery -A ingestor") and processes["beat"].endswith(" beat")
    assert "gunicorn" in processes["web"] and "ingestor:create_app()" in processes["web"]


def test_compose_has_the_whole_stack(compose):
    assert set(compose["services"]) == {"rabbitmq", "redis", "postgres", *INGESTOR_SERVICES}
    assert "management" in compose["services"]["rabbitmq"]["image"]
    redis_command = compose["services"]["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    assert redis_command[redis_command.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(
        volume.endswith(":/var/lib/postgresql/data") for volume in compose["services"]["postgres"]["volumes"]
    )


@pytest.mark.parametrize(("service", "process"), INGESTOR_SERVICES.items())
def test_compose_runs_the_procfile_commands(compose, service, process):
    command = compose["services"][service]["command"]
    expected = shlex.split(procfile()[process])
    # Compose may add arguments (beat's schedule file in a writable place), never change them.
    assert command[: len(expected)] == expected


def test_every_long_running_service_has_a_healthcheck_and_waits_for_what_it_needs(compose):
    services = compose["services"]
    for name, service in services.items():
        if name == "migrate":  # one-shot: it exits, the others wait for its success
            assert service["restart"] == "no"
            assert service["depends_on"] == {"postgres": {"condition": "service_healthy"}}
            continue
        assert service["healthcheck"]["test"], name
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, (name, dependency)
            expected = "service_completed_successfully" if dependency == "migrate" else "service_healthy"
            assert condition == {"condition": expected}, (name, dependency)
    for name in ("web", "worker", "beat"):
        assert set(services[name]["depends_on"]) == {"migrate", "postgres", "rabbitmq", "redis"}


def test_compose_sets_only_variables_the_ingestor_reads(compose):
    for name in INGESTOR_SERVICES:
        environment = compose["services"][name].get("environment", {})
        unknown = set(environment) - KNOWN_VARIABLES
        assert not unknown, f"{name} sets variables nothing reads: {unknown}"
    # Production in compose: a real secret, no development key.
    assert compose["services"]["web"]["environment"]["APP_ENV"] == "production"
    assert "JWT_SECRET_KEY" in compose["services"]["web"]["environment"]


def test_env_example_documents_every_variable():
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    assert SETTINGS_VARIABLES <= documented, SETTINGS_VARIABLES - documented
    assert documented <= KNOWN_VARIABLES, documented - KNOWN_VARIABLES
    text = (ROOT / ".env.example").read_text()
    for fallback in KNOWN_VARIABLES - SETTINGS_VARIABLES - {"PROMETHEUS_MULTIPROC_DIR"}:
        assert fallback in text, fallback


def test_readme_configuration_table_lists_every_variable():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration") :]
    listed = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    assert SETTINGS_VARIABLES | {"PORT", "WEB_CONCURRENCY"} <= listed, SETTINGS_VARIABLES - listed


def test_the_image_runs_as_a_user_and_installs_pinned_versions():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:[\d.]+-slim", dockerfile, re.M)
    assert "--constraint constraints.txt" in dockerfile
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    # Every package the project installs is pinned.
    pinned = {
        line.split("==")[0].lower().replace("_", "-")
        for line in (ROOT / "constraints.txt").read_text().split()
    }
    for package in ("prometheus-client", "python-json-logger", "pyyaml", "gunicorn", "celery"):
        assert package in pinned, package
