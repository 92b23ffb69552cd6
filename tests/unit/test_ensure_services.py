"""The decisions of scripts/ensure_services.py, against fake probes (no service is touched).

Which path is taken when the port answers, when the Debian command exists, when only
Docker answers, when neither does, and when a URL names another host; plus the
settings and docker-compose.yml it relies on agreeing with what it assumes.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from ingestor.settings import FALLBACK_VARIABLES, Settings

ROOT = Path(__file__).resolve().parents[2]


def _load_script():
    # scripts/ is not a package (the script runs before .venv exists): load it by path.
    spec = importlib.util.spec_from_file_location("ensure_services", ROOT / "scripts" / "ensure_services.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


es = _load_script()


@dataclass
class FakeMachine:
    """Probes answering from sets; records what was asked."""

    answering: set[tuple[str, int]] = field(default_factory=set)
    commands: set[str] = field(default_factory=set)
    docker: bool = False
    asked_commands: list[str] = field(default_factory=list)
    docker_calls: int = 0

    def machine(self):
        return es.Machine(
            port_answers=self.port_answers,
            command_exists=self.command_exists,
            docker_answers=self.docker_answers,
        )

    def port_answers(self, host: str, port: int) -> bool:
        return (host, port) in self.answering

    def command_exists(self, command: str) -> bool:
        self.asked_commands.append(command)
        return command in self.commands

    def docker_answers(self) -> bool:
        self.docker_calls += 1
        return self.docker


def default_targets(environ: dict[str, str] | None = None, variables=None):
    variables = variables or es.APP_VARIABLES
    return [es.resolve_target(service, variables[service], environ or {}) for service in es.SERVICES]


ALL_DEFAULT_PORTS = {("127.0.0.1", 5432), ("127.0.0.1", 6379), ("127.0.0.1", 5672)}
DEBIAN_COMMANDS = {"pg_ctlcluster", "redis-server", "rabbitmq-server"}


def actions(steps) -> dict[str, str]:
    return {step.target.service.name: step.action for step in steps}


def test_a_port_that_answers_is_used_as_it_is_and_nothing_else_is_asked():
    fake = FakeMachine(answering=ALL_DEFAULT_PORTS, commands=DEBIAN_COMMANDS, docker=True)
    steps = es.plan(default_targets(), fake.machine())
    assert actions(steps) == {"PostgreSQL": "use", "Redis": "use", "RabbitMQ": "use"}
    assert fake.asked_commands == [] and fake.docker_calls == 0


def test_an_installed_debian_service_is_started_the_debian_way_before_docker_is_considered():
    fake = FakeMachine(answering={("127.0.0.1", 6379)}, commands=DEBIAN_COMMANDS, docker=True)
    steps = es.plan(default_targets(), fake.machine())
    assert actions(steps) == {"PostgreSQL": "debian", "Redis": "use", "RabbitMQ": "debian"}
    assert fake.docker_calls == 0
    postgres = next(step for step in steps if step.target.service is es.POSTGRESQL)
    assert postgres.target.address == "127.0.0.1:5432"


def test_the_debian_commands_are_todays_and_redis_listens_where_it_is_expected():
    redis = es.resolve_target(es.REDIS, ("REDIS_URL",), {"REDIS_URL": "redis://127.0.0.1:6390/0"})
    command = es.debian_command(redis)
    assert command[0] == "redis-server" and command[command.index("--port") + 1] == "6390"
    assert command[command.index("--daemonize") + 1] == "yes"
    rabbitmq = es.resolve_target(es.RABBITMQ, (), {})
    assert es.debian_command(rabbitmq) == ["rabbitmq-server", "-detached"]


def test_with_only_docker_only_the_missing_service_is_started_from_compose():
    fake = FakeMachine(answering={("127.0.0.1", 5432), ("127.0.0.1", 5672)}, docker=True)
    steps = es.plan(default_targets(), fake.machine())
    assert actions(steps) == {"PostgreSQL": "use", "Redis": "compose", "RabbitMQ": "use"}
    redis = next(step for step in steps if step.action == "compose")
    command = es.compose_command(redis.target)
    assert command[:2] == ["docker", "compose"]
    assert command[command.index("up") :] == ["up", "--detach", "--wait", "--no-recreate", "redis"]
    assert command[command.index("--file") + 1] == str(ROOT / "docker-compose.yml")


def test_docker_is_asked_once_for_all_services():
    fake = FakeMachine(docker=True)
    steps = es.plan(default_targets(), fake.machine())
    assert set(actions(steps).values()) == {"compose"}
    assert fake.docker_calls == 1
    assert {es.compose_command(step.target)[-1] for step in steps} == {"postgres", "redis", "rabbitmq"}


def test_compose_runs_without_jwt_secret_key_and_keeps_a_set_one():
    assert es.compose_environment({"PATH": "/bin"})["JWT_SECRET_KEY"]
    assert es.compose_environment({"JWT_SECRET_KEY": "mine"})["JWT_SECRET_KEY"] == "mine"


def test_with_neither_the_message_names_the_service_its_port_the_setting_and_both_ways():
    fake = FakeMachine(answering={("127.0.0.1", 6379), ("127.0.0.1", 5672)})
    steps = es.plan(default_targets(), fake.machine())
    assert actions(steps) == {"PostgreSQL": "fail", "Redis": "use", "RabbitMQ": "use"}
    message = steps[0].message
    assert message.startswith(
        "PostgreSQL does not answer on 127.0.0.1:5432 (the default; DATABASE_URL points elsewhere)"
    )
    assert "sudo apt-get install postgresql" in message
    assert "start a Docker engine" in message
    assert "`docker compose up -d --wait postgres`" in message
    assert "point DATABASE_URL at a PostgreSQL that runs" in message


def test_a_configured_local_port_is_named_with_its_setting_and_docker_is_not_offered_for_it():
    environ = {"BROKER_URL": "amqp://guest:guest@localhost:5673//"}
    fake = FakeMachine(answering={("127.0.0.1", 5432), ("127.0.0.1", 6379)}, docker=True)
    steps = es.plan(default_targets(environ), fake.machine())
    # docker-compose.yml publishes RabbitMQ on 5672: starting it would not serve 5673.
    assert actions(steps)["RabbitMQ"] == "fail" and fake.docker_calls == 0
    message = steps[2].message
    assert "RabbitMQ does not answer on localhost:5673 (BROKER_URL points there)" in message
    assert "sudo apt-get install rabbitmq-server" in message
    assert "point BROKER_URL at 127.0.0.1:5672, where docker-compose.yml publishes RabbitMQ" in message


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("DATABASE_URL", "postgres://billing:secret@db.internal:5432/pulse_ingestor"),
        ("REDIS_URL", "redis://cache.example.com:6379/0"),
        ("BROKER_URL", "amqps://user:pw@10.0.0.5:5671/prod"),
    ],
)
def test_a_service_on_another_host_is_reported_and_never_started(variable, url):
    environ = {variable: url}
    remote = urlsplit(url)
    fake = FakeMachine(commands=DEBIAN_COMMANDS, docker=True)
    steps = es.plan(default_targets(environ), fake.machine())
    step = next(step for step in steps if step.target.setting == variable)
    assert step.action == "fail"
    assert f"does not answer on {remote.hostname}:{remote.port} ({variable} points there)" in step.message
    assert "nothing here starts it" in step.message
    assert step.target.service.debian_command not in fake.asked_commands


def test_a_service_on_another_host_that_answers_is_used():
    environ = {"DATABASE_URL": "postgresql://postgres@db.internal:6543/pulse_ingestor"}
    fake = FakeMachine(answering={("db.internal", 6543)})
    assert es.plan(default_targets(environ), fake.machine())[0].action == "use"


def test_the_settings_fallbacks_are_followed_in_the_ingestors_order():
    environ = {
        "REDIS_URL": "",
        "REDISCLOUD_URL": "redis://:pw@127.0.0.1:6391",
        "RABBITMQ_URL": "amqp://127.0.0.1:5699//",
    }
    _, redis, rabbitmq = default_targets(environ)
    assert (redis.port, redis.setting, redis.configured) == (6391, "REDISCLOUD_URL", True)
    assert (rabbitmq.port, rabbitmq.setting) == (5699, "RABBITMQ_URL")


def test_a_url_without_a_host_is_this_machine():
    target = es.resolve_target(
        es.POSTGRESQL, ("DATABASE_URL",), {"DATABASE_URL": "postgresql:///pulse_ingestor"}
    )
    assert (target.host, target.port, target.local) == ("127.0.0.1", 5432, True)


@pytest.mark.parametrize("url", ["postgresql://postgres@127.0.0.1:54x2/db", "127.0.0.1:5432"])
def test_a_setting_that_is_not_a_usable_url_is_named(url):
    with pytest.raises(es.ConfigurationError, match=r"^DATABASE_URL is not a"):
        es.resolve_target(es.POSTGRESQL, ("DATABASE_URL",), {"DATABASE_URL": url})


def test_for_tests_reads_the_test_suites_variables():
    environ = {
        "DATABASE_URL": "postgresql://db.internal/x",
        "TEST_DATABASE_URL": "postgresql://127.0.0.1:5433/t",
    }
    postgres, redis, rabbitmq = default_targets(environ, es.TEST_VARIABLES)
    assert (postgres.port, postgres.setting) == (5433, "TEST_DATABASE_URL")
    assert redis.setting == "TEST_REDIS_URL" and not redis.configured
    assert (rabbitmq.address, rabbitmq.setting) == ("127.0.0.1:5672", None)


def test_the_script_expects_what_the_ingestor_settings_default_to():
    defaults = Settings()
    for service, url in (
        (es.POSTGRESQL, defaults.database_url),
        (es.REDIS, defaults.redis_url),
        (es.RABBITMQ, defaults.broker_url),
    ):
        parts = urlsplit(url)
        assert (parts.hostname, parts.port) == (es.DEFAULT_HOST, service.default_port), service.name
        name, *fallbacks = es.APP_VARIABLES[service]
        assert tuple(fallbacks) == FALLBACK_VARIABLES.get(name, ()), service.name


def test_the_script_expects_what_the_test_suite_defaults_to():
    from tests.support import services

    for service, url in (
        (es.POSTGRESQL, services.DATABASE_URL),
        (es.REDIS, services.REDIS_URL),
        (es.RABBITMQ, services.BROKER_URL),
    ):
        variables = es.TEST_VARIABLES[service]
        if variables:  # the variable the suite reads, unset in this environment or not
            assert variables[0] in Path(services.__file__).read_text(), service.name
        parts = urlsplit(url)
        assert parts.hostname in es.LOCAL_HOSTS and parts.port, service.name


def test_compose_publishes_each_service_on_localhost_as_the_defaults_expect():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for service in es.SERVICES:
        definition = compose[service.compose_service]
        port = service.default_port
        assert f"127.0.0.1:{port}:{port}" in definition["ports"], service.name
        # Nothing of the backing services is published beyond this machine.
        assert all(str(published).startswith("127.0.0.1:") for published in definition["ports"]), service.name
        assert definition["healthcheck"]["test"], service.name
        assert "depends_on" not in definition, service.name  # `up --wait SERVICE` starts it alone
    # The default DATABASE_URL: user postgres, no password, database pulse_ingestor.
    postgres = compose["postgres"]["environment"]
    default = urlsplit(Settings().database_url)
    assert default.username == "postgres" and default.password is None
    assert postgres["POSTGRES_HOST_AUTH_METHOD"] == "trust"
    assert postgres["POSTGRES_DB"] == default.path.lstrip("/")
    # guest/guest is the official image's default, let in from outside its container.
    assert compose["rabbitmq"]["image"].startswith("rabbitmq:") and "RABBITMQ_DEFAULT_USER" not in compose[
        "rabbitmq"
    ].get("environment", {})
    assert urlsplit(Settings().broker_url).username == "guest"


def test_read_env_file_reads_what_env_example_documents(tmp_path):
    env = tmp_path / ".env"
    env.write_text(
        "# comment\n\nDATABASE_URL=postgresql://127.0.0.1:5433/x  # mine\n"
        "export REDIS_URL='redis://127.0.0.1:6390/0'\nBROKER_URL=\nnot a line\n"
    )
    assert es.read_env_file(env) == {
        "DATABASE_URL": "postgresql://127.0.0.1:5433/x",
        "REDIS_URL": "redis://127.0.0.1:6390/0",
        "BROKER_URL": "",
    }
    assert es.read_env_file(tmp_path / "absent") == {}


class Recorder:
    def __init__(self, fake: FakeMachine):
        self.fake = fake
        self.started: list[tuple[str, str]] = []

    def install(self, monkeypatch, root: Path) -> None:
        monkeypatch.setattr(es, "real_machine", self.fake.machine)
        monkeypatch.setattr(
            es, "start", lambda step, environ: self.started.append((step.target.service.name, step.action))
        )
        monkeypatch.setattr(es, "ROOT", root)


def test_main_starts_nothing_when_any_service_cannot_be_had(monkeypatch, tmp_path, caplog):
    recorder = Recorder(FakeMachine(commands={"redis-server"}))
    recorder.install(monkeypatch, tmp_path)
    assert es.main([], environ={}) == 1
    assert recorder.started == []
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert [message.split(" ", 1)[0] for message in errors] == ["PostgreSQL", "RabbitMQ"]


def test_main_starts_what_is_missing_and_the_environment_wins_over_dot_env(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text(
        "REDIS_URL=redis://127.0.0.1:6390/0\nDATABASE_URL=postgresql://db.internal/x\n"
    )
    fake = FakeMachine(answering={("127.0.0.1", 6390), ("127.0.0.1", 5672)}, docker=True)
    recorder = Recorder(fake)
    recorder.install(monkeypatch, tmp_path)
    assert es.main([], environ={"DATABASE_URL": "postgresql://127.0.0.1/x"}) == 0
    assert recorder.started == [("PostgreSQL", "compose")]


def test_main_names_a_bad_setting_and_starts_nothing(monkeypatch, tmp_path, caplog):
    recorder = Recorder(FakeMachine(docker=True))
    recorder.install(monkeypatch, tmp_path)
    assert es.main(["--for-tests"], environ={"TEST_REDIS_URL": "redis://127.0.0.1:port/1"}) == 2
    assert recorder.started == []
    assert "TEST_REDIS_URL is not a usable URL" in caplog.text


class FakeRun:
    """subprocess.run standing in for the start commands: records them, returns `returncode`."""

    def __init__(self, returncode: int = 0):
        self.returncode = returncode
        self.calls: list[tuple[list[str], dict[str, str]]] = []

    def __call__(self, command, env, check):
        self.calls.append((command, env))
        return es.subprocess.CompletedProcess(command, self.returncode)


def compose_step(service) -> object:
    return es.Step(es.resolve_target(service, es.APP_VARIABLES[service], {}), "compose")


def test_start_runs_compose_for_the_one_service_then_waits_for_its_port(monkeypatch):
    run, probes = FakeRun(), iter([False, False, True])
    monkeypatch.setattr(es.subprocess, "run", run)
    monkeypatch.setattr(es, "port_answers", lambda host, port: next(probes))
    monkeypatch.setattr(es.time, "sleep", lambda seconds: None)
    es.start(compose_step(es.POSTGRESQL), {"PATH": "/bin", "JWT_SECRET_KEY": ""})
    [(command, env)] = run.calls
    assert command[-1] == "postgres" and env["PATH"] == "/bin" and env["JWT_SECRET_KEY"]


def test_start_names_the_service_when_its_command_fails_or_its_port_stays_shut(monkeypatch):
    monkeypatch.setattr(es.subprocess, "run", FakeRun(returncode=1))
    with pytest.raises(
        es.StartError, match=r"^starting Redis failed .*docker compose.* exited 1.*Compose v2"
    ):
        es.start(compose_step(es.REDIS), {})
    monkeypatch.setattr(es.subprocess, "run", FakeRun())
    monkeypatch.setattr(es, "port_answers", lambda host, port: False)
    with pytest.raises(
        es.StartError, match=r"^RabbitMQ was started but does not answer on 127\.0\.0\.1:5672"
    ):
        es.start(compose_step(es.RABBITMQ), {}, timeout=0)
