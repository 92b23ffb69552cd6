"""The worker's start-up check of the Redis settings the dedupe design relies on."""

from __future__ import annotations

from unittest import mock

import pytest
from redis.exceptions import ResponseError

from ingestor.redis_store import RedisSettingsError, check_redis_settings, hash_listpack_entries

SOUND = {
    "maxmemory-policy": "noeviction",
    "hash-max-listpack-entries": "512",
    "hash-max-listpack-value": "64",
}


def redis_with(error=None, version="7.0.15", **overrides) -> mock.Mock:
    config = {**SOUND, **{name.replace("_", "-"): value for name, value in overrides.items()}}
    redis = mock.Mock()
    redis.info.return_value = {"redis_version": version}
    if error:
        redis.config_get.side_effect = error
    else:
        redis.config_get.side_effect = lambda name: {name: config[name]} if config.get(name) else {}
    return redis


def test_a_redis_that_may_evict_refuses_the_start_naming_the_setting() -> None:
    with pytest.raises(RedisSettingsError, match=r"maxmemory-policy is 'allkeys-lru'.*noeviction"):
        check_redis_settings(redis_with(maxmemory_policy="allkeys-lru"))


def test_noeviction_or_an_unreadable_config_passes() -> None:
    check_redis_settings(redis_with())
    check_redis_settings(redis_with(maxmemory_policy=b"noeviction"))
    check_redis_settings(redis_with(error=ResponseError("unknown command 'CONFIG'")))


@pytest.mark.parametrize(
    ("setting", "value"), [("hash_max_listpack_entries", "16"), ("hash_max_listpack_value", "8")]
)
def test_listpack_limits_too_small_for_the_id_index_refuse_the_start(setting, value) -> None:
    name = setting.replace("_", "-")
    with pytest.raises(RedisSettingsError, match=rf"{name} is {value}: .*at least"):
        check_redis_settings(redis_with(**{setting: value}))


def test_the_listpack_limit_is_read_or_defaults_when_config_is_refused() -> None:
    assert hash_listpack_entries(redis_with()) == 512
    assert hash_listpack_entries(redis_with(error=ResponseError("unknown command 'CONFIG'"))) == 128


def test_a_redis_before_7_refuses_the_start() -> None:
    with pytest.raises(RedisSettingsError, match=r"version 6.2.14: .*7.0 or later"):
        check_redis_settings(redis_with(version="6.2.14"))
    check_redis_settings(redis_with(version="7.2.4"))
