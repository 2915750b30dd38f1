"""Building Redis clients, and finding a Redis to talk to when none is configured."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig

from freshviews.core.embedded import EmbeddedRedis

logger = logging.getLogger(__name__)

LOCAL_DEFAULT_URL = "redis://127.0.0.1:6379/0"


class RedisConfigError(RuntimeError):
    """Redis is there but refuses us (credentials, TLS): retrying cannot help, so start-up fails with this."""


def where(redis: Redis) -> str:
    """``redis[s]://host:port`` of a client, without credentials, for messages."""
    pool = redis.connection_pool
    options = pool.connection_kwargs
    if "path" in options:
        return f"unix://{options['path']}"
    scheme = "rediss" if "SSL" in pool.connection_class.__name__ else "redis"
    return f"{scheme}://{options.get('host', '?')}:{options.get('port', 6379)}"


def config_problem(exc: BaseException, redis: Redis) -> str | None:
    """The reason ``exc`` will not go away by retrying (None: Redis is merely down or restarting)."""
    text = str(exc)
    if isinstance(exc, AuthenticationError | AuthorizationError) or text.startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
        return f"Redis at {where(redis)} refused our credentials ({text}); check the user and password in REDIS_URL"
    if isinstance(exc, ResponseError) and "NOPERM" in text:
        return f"the Redis user in REDIS_URL lacks a permission the product needs ({text})"
    if "SSL" in text or "certificate" in text:
        return (
            f"TLS with Redis at {where(redis)} failed ({text}); for a private CA add ?ssl_ca_certs=/path/ca.pem "
            "to the rediss:// URL"
        )
    return None


async def check_redis(redis: Redis, *, attempts: int = 3) -> bool:
    """Ping Redis once at start-up: True if it answers, False if it is down (weather: callers go on).

    Raises:
        RedisConfigError: it answers but refuses us (wrong password, TLS mismatch or bad certificate), or
            it resets every connection, which is what a TLS port does to a plaintext ``redis://`` client.
    """
    resets = 0
    for _ in range(attempts):
        try:
            await redis.ping()
            return True
        except (RedisError, OSError) as exc:
            problem = config_problem(exc, redis)
            if problem is not None:
                raise RedisConfigError(problem) from exc
            if "reset by peer" not in str(exc) and "closed by server" not in str(exc):
                return False
            resets += 1
    raise RedisConfigError(
        f"Redis at {where(redis)} accepts connections and then resets them {resets} times in a row: if it is a "
        "TLS port, use a rediss:// URL"
    )


def create_redis(url: str, *, timeout: float = 2.0, max_connections: int | None = None) -> Redis:
    """A client with bounded timeouts, so a dead or half-open link surfaces as an error instead of a hang."""
    return Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        socket_keepalive=True,
        health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        max_connections=max_connections,
        client_name=None,
        # No CLIENT SETINFO and no CLIENT MAINT_NOTIFICATIONS (a Redis Enterprise feature) on each new
        # connection: round trips fewer, and a least-privilege ACL user needs no CLIENT permission.
        driver_info=None,
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
    )


async def _answers(url: str) -> bool:
    client = Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        return bool(await client.ping())
    except (OSError, RedisConnectionError, RedisTimeoutError):
        return False
    finally:
        await client.aclose()


@asynccontextmanager
async def redis_url_or_embedded(url: str | None, data_dir: Path, *, probe_local: bool = True) -> AsyncIterator[str]:
    """Yield the Redis URL to use.

    ``url`` wins when set. Otherwise a Redis already on localhost:6379 is used (unless ``probe_local`` is
    false), and failing that an
    embedded ``redis-server`` is started with its data under ``data_dir`` and stopped on exit (unless
    another process of ours started it first, in which case it is shared and left running).
    """
    if url:
        yield url
        return
    if probe_local and await _answers(LOCAL_DEFAULT_URL):
        logger.info("REDIS_URL is not set; using the Redis answering on %s", LOCAL_DEFAULT_URL)
        yield LOCAL_DEFAULT_URL
        return
    server = EmbeddedRedis(data_dir / "redis")
    embedded_url = server.start()
    logger.warning(
        "REDIS_URL is not set and %s: %s embedded redis-server at %s (data in %s)",
        "nothing answers on 127.0.0.1:6379" if probe_local else "probing 127.0.0.1:6379 is off",
        "started an" if server.owned else "reusing the",
        embedded_url,
        server.data_dir,
    )
    try:
        yield embedded_url
    finally:
        server.stop()
