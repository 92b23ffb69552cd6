"""Unit tests of the typed settings object read from environment variables."""

from __future__ import annotations

import pytest
from flask import Flask

from ingestor.settings import (
    CONFIG_KEY,
    DEVELOPMENT_JWT_SECRET,
    Settings,
    SettingsError,
    get_settings,
    normalize_database_url,
    settings_of,
)

INT_VARS = [
    ("DEDUPE_HORIZON_SECONDS", "dedupe_horizon_seconds"),
    ("LATE_LIMIT_SECONDS", "late_limit_seconds"),
    ("FUTURE_LIMIT_SECONDS", "future_limit_seconds"),
    ("REDIS_CHUNK_SIZE", "redis_chunk_size"),
    ("TASK_MAX_RETRIES", "task_max_retries"),
    ("TASK_RETRY_BACKOFF_MAX_SECONDS", "task_retry_backoff_max_seconds"),
    ("RAW_BATCH_SIZE", "raw_batch_size"),
    ("RAW_BATCH_WAIT_MS", "raw_batch_wait_ms"),
    ("RAW_MAX_BODY_BYTES", "raw_max_body_bytes"),
    ("REDIS_MEMORY_CHECK_SECONDS", "redis_memory_check_seconds"),
    ("DATABASE_CONNECT_TIMEOUT_SECONDS", "database_connect_timeout_seconds"),
    ("REDIS_CONNECT_TIMEOUT_SECONDS", "redis_connect_timeout_seconds"),
    ("REDIS_SOCKET_TIMEOUT_SECONDS", "redis_socket_timeout_seconds"),
]


def test_defaults_point_at_localhost() -> None:
    settings = Settings.from_env({})
    assert settings.database_url == "postgresql+psycopg2://postgres@127.0.0.1:5432/pulse_ingestor"
    assert settings.broker_url == "amqp://guest:guest@127.0.0.1:5672//"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.persist_schedule == "0 * * * *"
    assert settings.dedupe_horizon_seconds == 24 * 3600
    assert settings.late_limit_seconds == 35 * 24 * 3600
    assert settings.future_limit_seconds == 5 * 60
    assert settings.redis_chunk_size == 5000
    # A silent PostgreSQL or Redis is an outage in seconds; a long script is never cut.
    assert (settings.database_connect_timeout_seconds, settings.redis_connect_timeout_seconds) == (5, 5)
    assert settings.redis_socket_timeout_seconds == 20
    assert settings.task_max_retries == 20
    assert settings.task_retry_backoff_max_seconds == 300
    assert settings.raw_queue == "pulses.raw"
    assert settings.raw_batch_size == 500
    assert settings.raw_batch_wait_ms == 50
    assert settings.raw_max_body_bytes == 1024 * 1024


def test_empty_values_mean_default() -> None:
    assert Settings.from_env({"REDIS_CHUNK_SIZE": "", "DATABASE_URL": ""}) == Settings.from_env({})


def test_unrelated_variables_are_ignored() -> None:
    assert Settings.from_env({"HOME": "/root", "redis_chunk_size": "7"}) == Settings.from_env({})


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u:p@h:5432/d", "postgresql+psycopg2://u:p@h:5432/d"),
        ("postgresql://u:p@h:5432/d", "postgresql+psycopg2://u:p@h:5432/d"),
        ("postgresql+psycopg2://u:p@h:5432/d", "postgresql+psycopg2://u:p@h:5432/d"),
        ("postgres://u:p%40ss@h/d?sslmode=require", "postgresql+psycopg2://u:p%40ss@h/d?sslmode=require"),
    ],
)
def test_database_url_gets_the_psycopg2_driver(url: str, expected: str) -> None:
    assert Settings.from_env({"DATABASE_URL": url}).database_url == expected
    assert normalize_database_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u:p@h:3306/d",
        "sqlite:///tmp/x.db",
        "postgresql+psycopg://u:p@h/d",
        "not a url",
        "postgres:/u@h/d",
        "u:p@h:5432/d",
    ],
)
def test_bad_database_url_raises_naming_the_variable(url: str) -> None:
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        Settings.from_env({"DATABASE_URL": url})


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


def test_strings_are_taken_as_given() -> None:
    settings = Settings.from_env(
        {"BROKER_URL": "amqp://u:p@rabbit:5672/vh", "REDIS_URL": "redis://cache:6379/3"}
    )
    assert settings.broker_url == "amqp://u:p@rabbit:5672/vh"
    assert settings.redis_url == "redis://cache:6379/3"


@pytest.mark.parametrize(("var", "attr"), INT_VARS)
def test_integer_variables_are_parsed(var: str, attr: str) -> None:
    settings = Settings.from_env({var: "123"})
    assert getattr(settings, attr) == 123
    assert isinstance(getattr(settings, attr), int)


def test_several_integer_variables_at_once() -> None:
    settings = Settings.from_env({"DEDUPE_HORIZON_SECONDS": "7200", "REDIS_CHUNK_SIZE": "100"})
    assert (settings.dedupe_horizon_seconds, settings.redis_chunk_size) == (7200, 100)
    assert settings.late_limit_seconds == 35 * 24 * 3600


@pytest.mark.parametrize(("var", "attr"), INT_VARS)
@pytest.mark.parametrize("raw", ["abc", "1.5", "1e3", "0", "-1", "ten"])
def test_bad_integer_variables_raise_naming_the_variable(var: str, attr: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=var):
        Settings.from_env({var: raw})


@pytest.mark.parametrize("schedule", ["*/5 * * * *", "0 * * * *", "15 3 * * 1-5", "0 0 1 * *"])
def test_cron_persist_schedules_are_accepted(schedule: str) -> None:
    settings = Settings.from_env({"PERSIST_SCHEDULE": schedule})
    assert settings.persist_schedule == schedule
    assert settings.persist_crontab() is not None


def test_every_five_minutes_schedule_means_every_five_minutes() -> None:
    crontab = Settings.from_env({"PERSIST_SCHEDULE": "*/5 * * * *"}).persist_crontab()
    assert crontab.minute == set(range(0, 60, 5))
    assert crontab.hour == set(range(24))


def test_default_schedule_is_hourly_on_the_hour() -> None:
    crontab = Settings.from_env({}).persist_crontab()
    assert crontab.minute == {0}
    assert crontab.hour == set(range(24))


@pytest.mark.parametrize("schedule", ["every hour", "61 * * * *", "* * *", "a b c d e"])
def test_bad_persist_schedule_raises(schedule: str) -> None:
    with pytest.raises(SettingsError, match="PERSIST_SCHEDULE"):
        Settings.from_env({"PERSIST_SCHEDULE": schedule})


def test_outside_development_a_strong_jwt_secret_is_required() -> None:
    """The web must refuse to start with a guessable signing key in production."""
    for secret in ("", "short", "development-only-insecure-jwt-secret-key"):
        with pytest.raises(SettingsError, match="JWT_SECRET_KEY"):
            Settings.from_env({"APP_ENV": "production", "JWT_SECRET_KEY": secret})
    strong = "k" * 40
    assert Settings.from_env({"APP_ENV": "production", "JWT_SECRET_KEY": strong}).jwt_secret_key == strong


def test_development_runs_with_the_built_in_key() -> None:
    assert Settings.from_env({}).jwt_secret_key == "development-only-insecure-jwt-secret-key"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"CLOUDAMQP_URL": "amqps://u:p@cloud/vh"}, "amqps://u:p@cloud/vh"),
        ({"RABBITMQ_URL": "amqp://u:p@rabbit/vh"}, "amqp://u:p@rabbit/vh"),
        ({"CLOUDAMQP_URL": "amqps://cloud", "RABBITMQ_URL": "amqp://rabbit"}, "amqps://cloud"),
        ({"BROKER_URL": "amqp://mine", "CLOUDAMQP_URL": "amqps://cloud"}, "amqp://mine"),
        ({"BROKER_URL": "", "RABBITMQ_URL": "amqp://rabbit"}, "amqp://rabbit"),
    ],
)
def test_broker_url_falls_back_to_the_add_on_variables(environ: dict[str, str], expected: str) -> None:
    assert Settings.from_env(environ).broker_url == expected


def test_redis_url_falls_back_to_rediscloud_but_redis_url_wins() -> None:
    assert Settings.from_env({"REDISCLOUD_URL": "redis://u:p@cloud:1/0"}).redis_url == "redis://u:p@cloud:1/0"
    both = {"REDIS_URL": "redis://mine:6379/2", "REDISCLOUD_URL": "redis://cloud:1/0"}
    assert Settings.from_env(both).redis_url == "redis://mine:6379/2"
    # Heroku sets REDIS_TLS_URL only beside REDIS_URL: it is never a fallback.
    assert Settings.from_env({"REDIS_TLS_URL": "rediss://tls:1"}).redis_url == "redis://127.0.0.1:6379/0"


def test_log_format_defaults_to_text_in_development_and_json_elsewhere() -> None:
    assert Settings.from_env({}).log_format == "text"
    production = {"APP_ENV": "production", "JWT_SECRET_KEY": "k" * 40}
    assert Settings.from_env(production).log_format == "json"
    assert Settings.from_env({**production, "LOG_FORMAT": "text"}).log_format == "text"
    assert Settings.from_env({"LOG_FORMAT": "json"}).log_format == "json"


@pytest.mark.parametrize(
    ("var", "value"), [("LOG_FORMAT", "xml"), ("LOG_LEVEL", "LOUD"), ("METRICS_PORT", "70000")]
)
def test_bad_observability_variables_raise_naming_the_variable(var: str, value: str) -> None:
    with pytest.raises(SettingsError, match=var):
        Settings.from_env({var: value})


def test_log_level_is_case_insensitive_and_metrics_port_zero_means_off() -> None:
    settings = Settings.from_env({"LOG_LEVEL": "debug", "METRICS_PORT": "0"})
    assert (settings.log_level, settings.metrics_port) == ("DEBUG", 0)
    assert Settings.from_env({"METRICS_PORT": "9191"}).metrics_port == 9191
    with pytest.raises(SettingsError, match="METRICS_PORT"):
        Settings.from_env({"METRICS_PORT": "-1"})


@pytest.mark.parametrize("value", ["0", "101", "-5"])
def test_redis_memory_warn_percent_must_be_a_percent(value: str) -> None:
    with pytest.raises(SettingsError, match="REDIS_MEMORY_WARN_PERCENT"):
        Settings.from_env({"REDIS_MEMORY_WARN_PERCENT": value})
    assert Settings.from_env({}).redis_memory_warn_percent == 80
    assert Settings.from_env({"REDIS_MEMORY_WARN_PERCENT": "95"}).redis_memory_warn_percent == 95


def test_login_settings_are_read_and_zero_turns_the_lookup_grace_off() -> None:
    settings = Settings.from_env(
        {"USER_LOOKUP_GRACE_SECONDS": "0", "TRUSTED_PROXIES": "2", "LOGIN_RATE_LIMIT_PER_ADDRESS": "5/minute"}
    )

    assert (settings.user_lookup_grace_seconds, settings.trusted_proxies) == (0, 2)
    assert settings.login_rate_limit_per_address == "5/minute"
    assert Settings.from_env({}).user_lookup_grace_seconds == 300


@pytest.mark.parametrize("var", ["LOGIN_RATE_LIMIT_PER_USERNAME", "LOGIN_RATE_LIMIT_PER_ADDRESS"])
def test_bad_login_rate_limits_raise_naming_the_variable(var: str) -> None:
    with pytest.raises(SettingsError, match=var):
        Settings.from_env({var: "ten a minute"})


def test_validated_returns_a_new_instance_and_leaves_its_input_alone() -> None:
    given = Settings(database_url="postgres://u@h/d", log_level="debug")
    checked = given.validated()
    assert (checked.database_url, checked.log_level, checked.log_format, checked.jwt_secret_key) == (
        "postgresql+psycopg2://u@h/d",
        "DEBUG",
        "text",
        DEVELOPMENT_JWT_SECRET,
    )
    # Frozen means frozen: what a caller holds does not change under it.
    assert (given.database_url, given.log_level, given.log_format, given.jwt_secret_key) == (
        "postgres://u@h/d",
        "debug",
        "",
        "",
    )


def test_the_app_settings_are_read_typed_through_one_accessor() -> None:
    settings = Settings.from_env({"REDIS_CHUNK_SIZE": "7"})
    app = Flask(__name__)
    app.config[CONFIG_KEY] = settings
    assert settings_of(app) is settings
    with app.app_context():
        assert get_settings() is settings


def test_user_cache_seconds_defaults_to_5_zero_turns_it_off_and_it_is_bounded() -> None:
    assert Settings.from_env({}).user_cache_seconds == 5
    assert Settings.from_env({"USER_CACHE_SECONDS": "0"}).user_cache_seconds == 0
    assert Settings.from_env({"USER_CACHE_SECONDS": "300"}).user_cache_seconds == 300
    for value, words in [("-1", "must be positive"), ("five", "must be an integer"), ("301", "at most 300")]:
        with pytest.raises(SettingsError, match=f"^USER_CACHE_SECONDS .*{words}"):
            Settings.from_env({"USER_CACHE_SECONDS": value})
