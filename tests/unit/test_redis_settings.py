"""The worker's start-up check of the Redis settings the dedupe design relies on."""

from __future__ import annotations

from unittest import mock

import pytest
from redis.exceptions import ResponseError

from ingestor.redis_store import RedisSettingsError, check_redis_settings, set_intset_entries

SOUND = {
    "maxmemory-policy": "noeviction",
    "set-max-intset-entries": "512",
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


def test_an_intset_limit_too_small_for_the_id_index_refuses_the_start() -> None:
    with pytest.raises(RedisSettingsError, match=r"set-max-intset-entries is 16: .*at least 64"):
        check_redis_settings(redis_with(set_max_intset_entries="16"))
    check_redis_settings(redis_with(set_max_intset_entries="64"))


def test_the_intset_limit_is_read_or_defaults_when_config_is_refused() -> None:
    assert set_intset_entries(redis_with(set_max_intset_entries="1024")) == 1024
    assert set_intset_entries(redis_with(error=ResponseError("unknown command 'CONFIG'"))) == 512


def test_a_redis_before_7_refuses_the_start() -> None:
    with pytest.raises(RedisSettingsError, match=r"version 6.2.14: .*7.0 or later"):
        check_redis_settings(redis_with(version="6.2.14"))
    check_redis_settings(redis_with(version="7.2.4"))
