"""The worker's start-up check of the Redis settings the dedupe design relies on."""

from __future__ import annotations

from unittest import mock

import pytest
from redis.exceptions import ResponseError

from ingestor.redis_store import RedisSettingsError, check_redis_settings


def redis_with(policy=None, error=None) -> mock.Mock:
    redis = mock.Mock()
    if error:
        redis.config_get.side_effect = error
    else:
        redis.config_get.return_value = {"maxmemory-policy": policy}
    return redis


def test_a_redis_that_may_evict_refuses_the_start_naming_the_setting() -> None:
    with pytest.raises(RedisSettingsError, match=r"maxmemory-policy is 'allkeys-lru'.*noeviction"):
        check_redis_settings(redis_with("allkeys-lru"))


def test_noeviction_or_an_unreadable_config_passes() -> None:
    check_redis_settings(redis_with("noeviction"))
    check_redis_settings(redis_with(b"noeviction"))
    check_redis_settings(redis_with(error=ResponseError("unknown command 'CONFIG'")))
