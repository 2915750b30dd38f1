"""Building Redis clients, and finding a Redis to talk to when none is configured."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from publisher.embedded import EmbeddedRedis

logger = logging.getLogger(__name__)

LOCAL_DEFAULT_URL = "redis://127.0.0.1:6379/0"


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
