"""Login rate limits (Flask-Limiter): per username and per client address, kept in Redis.

Every attempt on the login blueprint counts, whatever its outcome, against two limits:
one per client address (`request.remote_addr`, which `TRUSTED_PROXIES` lets ProxyFix
take from X-Forwarded-For), and one per username named in the body. The counters live
in the ingestor's Redis, so every gunicorn worker and every web replica shares them.
Past either limit: 429 with `Retry-After`. Redis unreachable: the attempt is refused
(503 naming Redis, see ingestor.api.errors) rather than let through uncounted.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any

from flask import Blueprint, Flask, make_response, request
from flask_limiter import Limiter, RequestLimit
from flask_limiter.util import get_remote_address

from ingestor.api.errors import ERROR_CODES, error_response
from ingestor.api.parsing import BodyError, decode_json
from ingestor.redis_store import is_cluster
from ingestor.settings import get_settings, settings_of

MAX_USERNAME_LENGTH = 64


def _username() -> str | None:
    """The username the login body names, or None when it names none (that body is a 400)."""
    try:
        body = decode_json(request.get_data(cache=True))
    except BodyError:
        return None
    username = body.get("username") if isinstance(body, dict) else None
    if not isinstance(username, str) or not 1 <= len(username) <= MAX_USERNAME_LENGTH:
        return None
    return username


def _username_key() -> str:
    # Hashed: any character may be in a username, and the key is a Redis key name.
    return "username:" + hashlib.sha256((_username() or "").encode()).hexdigest()


def _address_key() -> str:
    return "address:" + get_remote_address()


def _refusal(what: str):
    def on_breach(limit: RequestLimit):
        # When the oldest counted attempt leaves the window (RequestLimit.reset_at adds a second).
        retry_after = max(1, math.ceil(limit.window[0] - time.time()))
        body, status, headers = error_response(
            429,
            ERROR_CODES[429],
            f"Too many login attempts {what} (at most {limit.limit}); retry in {retry_after} seconds.",
            headers={"Retry-After": str(retry_after)},
        )
        return make_response(body, status, headers)

    return on_breach


def _setting(name: str):
    return lambda: getattr(get_settings(), name)


def init_app(app: Flask, blueprint: Blueprint) -> Limiter:
    """Limit every route of `blueprint` (the login) on `app`, with counters in the app's Redis."""
    settings = settings_of(app)
    redis = app.extensions["redis"]
    # The app's own connection pool: same server, db and options as the pulses. A
    # cluster client has a pool per node: limits makes its own RedisCluster from the
    # same URL (it spells a cluster as REDIS_URL does), with the same timeouts.
    storage_options: dict[str, Any] = (
        {
            "socket_connect_timeout": settings.redis_connect_timeout_seconds,
            "socket_timeout": settings.redis_socket_timeout_seconds,
        }
        if is_cluster(redis)
        else {"connection_pool": redis.connection_pool}
    )
    limiter = Limiter(
        key_func=_address_key,
        storage_uri=settings.redis_url,
        storage_options=storage_options,
        # Exact over any window, not twice the limit across a window boundary.
        strategy="moving-window",
        key_prefix="login",
        # Off: Retry-After is set on the 429 itself (on_breach), and the X-RateLimit-*
        # headers would read Redis again after the view, where an outage would be a 500.
        headers_enabled=False,
        # Fail closed: a Redis error is raised (a 503), never swallowed into "no limit".
        swallow_errors=False,
        in_memory_fallback_enabled=False,
    )
    limiter.init_app(app)
    limiter.limit(
        _setting("login_rate_limit_per_address"),
        key_func=_address_key,
        on_breach=_refusal("from this address"),
    )(blueprint)
    limiter.limit(
        _setting("login_rate_limit_per_username"),
        key_func=_username_key,
        # A body naming no username is a 400 anyway; the address limit still counts it.
        exempt_when=lambda: _username() is None,
        on_breach=_refusal("for this username"),
    )(blueprint)
    return limiter
