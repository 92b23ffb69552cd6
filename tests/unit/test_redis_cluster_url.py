"""How REDIS_URL names a Redis Cluster, and the clear errors for one it cannot use."""

from __future__ import annotations

import pytest

from ingestor.settings import RedisClusterAddress, Settings, SettingsError, parse_redis_cluster_url


def test_a_cluster_url_lists_its_nodes_and_credentials() -> None:
    assert parse_redis_cluster_url("redis+cluster://10.0.0.1:7000,redis-b:7001") == RedisClusterAddress(
        nodes=(("10.0.0.1", 7000), ("redis-b", 7001)), username=None, password=None, ssl=False
    )
    assert parse_redis_cluster_url("rediss+cluster://app:p%40ss@h:6380/0") == RedisClusterAddress(
        nodes=(("h", 6380),), username="app", password="p@ss", ssl=True
    )
    assert parse_redis_cluster_url("redis+cluster://:secret@[::1]:7000").password == "secret"


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://h:6380/2", "unix:///tmp/redis.sock"])
def test_any_other_url_is_a_single_redis(url: str) -> None:
    assert parse_redis_cluster_url(url) is None


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+cluster://h:7000/3", "no database"),
        ("redis+cluster://h:7000?ssl_cert_reqs=none", "no database nor options"),
        ("redis+cluster://h", "host:port"),
        ("redis+cluster://h:7000,h2", "host:port"),
        ("redis+cluster://h:notaport", "host:port"),
        ("redis+cluster://:7000", "host:port"),
        ("redis+cluster://h:70000", "host:port"),
    ],
)
def test_a_cluster_url_it_cannot_use_is_refused_by_the_settings(url: str, complaint: str) -> None:
    with pytest.raises(SettingsError, match=complaint):
        Settings.from_env({"REDIS_URL": url})


def test_the_wait_settings_default_to_no_wait() -> None:
    settings = Settings.from_env({})
    assert (settings.redis_wait_replicas, settings.redis_wait_timeout_ms) == (0, 1000)
    assert Settings.from_env({"REDIS_WAIT_REPLICAS": "1"}).redis_wait_replicas == 1
    with pytest.raises(SettingsError, match="REDIS_WAIT_TIMEOUT_MS must be positive"):
        Settings.from_env({"REDIS_WAIT_TIMEOUT_MS": "0"})
