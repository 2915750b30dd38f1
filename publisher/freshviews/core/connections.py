"""Building Redis clients, the one rule for which Redis a process uses, and telling Redis weather from mistakes.

Every process resolves Redis the same way (:func:`redis_url`): ``REDIS_URL`` when set; otherwise an embedded
``redis-server`` only when asked for (``FRESHVIEWS_EMBEDDED_REDIS=1``, which the demo sets for itself); otherwise
a :class:`~freshviews.core.settings.ConfigError`. Nothing probes localhost: a process that silently picked
whatever answers on port 6379 could write into somebody else's Redis, or into another one than its peers use.

The URL also says which kind of client: ``redis+cluster://`` (or ``rediss+cluster://``) builds redis-py's
:class:`~redis.asyncio.cluster.RedisCluster`, anything else a :class:`~redis.asyncio.Redis`; a mismatch between
the URL and the server is refused at start-up with the fix named (:func:`check_redis`).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    MovedError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig

from freshviews.core.clients import RedisClient, is_cluster, ping_every_primary
from freshviews.core.embedded import EmbeddedRedis
from freshviews.core.settings import CLUSTER_SCHEMES, ConfigError, RedisSettings

logger = logging.getLogger(__name__)


class RedisConfigError(ConfigError):
    """Redis is there but refuses us (credentials, TLS, a database index, a cluster node): retrying cannot help,
    so start-up fails with this."""


def where(redis: RedisClient) -> str:
    """``redis[s]://host:port`` of a client, without credentials, for messages."""
    if is_cluster(redis):
        scheme = "rediss+cluster" if redis.connection_kwargs.get("ssl") else "redis+cluster"
        nodes = redis.nodes_manager.startup_nodes or redis.nodes_manager.nodes_cache
        return f"{scheme}://{','.join(sorted(nodes)) or '?'}"
    pool = redis.connection_pool
    options = pool.connection_kwargs
    if "path" in options:
        return f"unix://{options['path']}"
    scheme = "rediss" if "SSL" in pool.connection_class.__name__ else "redis"
    return f"{scheme}://{options.get('host', '?')}:{options.get('port', 6379)}"


def error_code(exc: BaseException) -> str:
    """The code word Redis starts an error reply with (``NOGROUP``, ``BUSYGROUP``, ``WRONGPASS``, ``MOVED``...),
    or ""."""
    if isinstance(exc, AskError):  # redis-py keeps only what follows the word: "<slot> <host:port>"
        return "MOVED" if isinstance(exc, MovedError) else "ASK"
    if not isinstance(exc, ResponseError):
        return ""
    word = str(exc).split(" ", 1)[0]
    return word if word.isupper() else ""


def _tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def config_problem(exc: BaseException, redis: RedisClient) -> str | None:
    """The reason ``exc`` will not go away by retrying (None: Redis is merely down or restarting)."""
    text = str(exc)
    code = error_code(exc)
    if isinstance(exc, MovedError) and not is_cluster(redis):
        return f"Redis at {where(redis)} is a Redis Cluster (it answered MOVED {text}): {_use_cluster(redis)}"
    if isinstance(exc, RedisClusterException) and "not enabled" in text:
        return (
            f"Redis at {where(redis)} is not a Redis Cluster ({text}): use a redis:// URL (without +cluster) "
            "in REDIS_URL"
        )
    if isinstance(exc, AuthenticationError | AuthorizationError) or code in ("NOAUTH", "WRONGPASS"):
        return f"Redis at {where(redis)} refused our credentials ({text}); check the user and password in REDIS_URL"
    if code == "NOPERM":
        return f"the Redis user in REDIS_URL lacks a permission the product needs ({text})"
    if _tls_failure(exc):
        return (
            f"TLS with Redis at {where(redis)} failed ({text}); for a private CA add ?ssl_ca_certs=/path/ca.pem "
            "to the rediss:// URL"
        )
    if "DB index is out of range" in text:
        return f"Redis at {where(redis)} has no such database ({text}); fix the /db number in REDIS_URL"
    return None


def describe(exc: BaseException) -> str:
    """``Type: message`` of an error, for one-line logs."""
    return f"{type(exc).__name__}: {exc}"


def _use_cluster(redis: RedisClient) -> str:
    return f"use REDIS_URL={where(redis).replace('://', '+cluster://', 1)}"


async def check_redis(redis: RedisClient, *, attempts: int = 3) -> str | None:
    """Ping Redis (every master of a cluster) once at start-up: None if it answers, else why not (weather:
    callers go on and retry).

    Raises:
        RedisConfigError: it answers but refuses us (wrong password, TLS mismatch or bad certificate, a database
            that does not exist, a Redis Cluster node behind a ``redis://`` URL or a single Redis behind a
            ``redis+cluster://`` one), or it resets every connection, which is what a TLS port does to a
            plaintext ``redis://`` client.
    """
    resets = 0
    reason = "no answer"
    for _ in range(attempts):
        try:
            await ping_every_primary(redis)
            cluster_node = isinstance(redis, Redis) and await _cluster_enabled(redis)
        except (RedisError, RedisClusterException, OSError) as exc:
            problem = config_problem(exc, redis)
            if problem is not None:
                raise RedisConfigError(problem) from exc
            reason = describe(exc)
            if "reset by peer" not in str(exc) and "closed by server" not in str(exc):
                return reason
            resets += 1
            continue
        if cluster_node and isinstance(redis, Redis):
            raise RedisConfigError(f"Redis at {where(redis)} is a Redis Cluster node: {_use_cluster(redis)}")
        return None
    raise RedisConfigError(
        f"Redis at {where(redis)} accepts connections and then resets them {resets} times in a row: if it is a "
        "TLS port, use a rediss:// URL"
    )


async def _cluster_enabled(redis: Redis) -> bool:
    try:
        info = await redis.info("cluster")
    except ResponseError as exc:
        if error_code(exc) == "NOPERM":
            return False  # a least-privilege user may not run INFO: nothing to tell from here
        raise
    return str(info.get("cluster_enabled", "0")) == "1"


def create_redis(url: str, *, timeout: float = 2.0, max_connections: int | None = None) -> RedisClient:
    """A client with bounded timeouts, so a dead or half-open link surfaces as an error instead of a hang: a
    :class:`RedisCluster` for a ``redis+cluster://`` URL (``max_connections`` then bounds each node's pool),
    else a :class:`Redis`."""
    if url.startswith(CLUSTER_SCHEMES):
        return RedisCluster.from_url(
            url.replace("+cluster", "", 1),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            socket_keepalive=True,
            health_check_interval=10,
            # Retries of one command across a failover (MOVED, a node gone, the cluster down while it elects):
            # a few, short, so that a loop's own backoff takes over soon and a read keeps its deadline.
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
            max_connections=max_connections or 100,
            driver_info=None,
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
        )
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


@asynccontextmanager
async def redis_url(settings: RedisSettings) -> AsyncIterator[str]:
    """Yield the Redis URL this process uses: the one rule of every freshviews process.

    ``REDIS_URL`` when set. Otherwise, with ``FRESHVIEWS_EMBEDDED_REDIS`` set, an embedded ``redis-server`` with
    its data under ``data_dir``, stopped on exit (unless another process of ours started it first, in which case
    it is shared and left running). Otherwise :class:`ConfigError`.
    """
    if settings.redis_url:
        yield settings.redis_url
        return
    if not settings.embedded_redis:
        raise ConfigError(
            "REDIS_URL is not set: point it at your Redis (redis://host:6379/0), or set FRESHVIEWS_EMBEDDED_REDIS=1 "
            "to start an embedded redis-server for local use"
        )
    server = EmbeddedRedis(settings.data_dir / "redis")
    try:
        url = server.start()
    except (OSError, RuntimeError) as exc:
        raise ConfigError(f"could not start an embedded redis-server: {exc}") from None
    logger.info(
        "%s embedded redis-server at %s (data in %s)",
        "started an" if server.owned else "reusing the",
        url,
        server.data_dir,
    )
    try:
        yield url
    finally:
        server.stop()
