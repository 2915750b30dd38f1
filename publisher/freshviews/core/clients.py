"""The two kinds of Redis client a process may hold (one Redis, or a Redis Cluster), and the few things that
differ between them.

Everything else is one code path: redis-py's cluster client routes each keyed command to the node owning its
key, splits a non-transactional pipeline by node, and runs ``scan_iter`` over every primary. What it refuses,
and what this module does instead:

- keyless commands in a pipeline (``TIME``): the clock is read by a one-line script on the node of a key the
  pipeline reads anyway (:func:`queue_time`), so it is also that key's node's clock;
- ``EVALSHA`` in a pipeline: a cluster pipeline sends the script's text with ``EVAL`` (:func:`queue_script`);
  a script cached on a master is not on the replica that replaces it, and ``EVAL`` needs no cache;
- one node answering for all: :func:`ping_every_primary` asks each master.

The cluster client also raises :class:`~redis.exceptions.RedisClusterException`, which is no ``RedisError``,
when it can map a slot to no node or reach no node (a failover under way, every node it knows gone): weather,
like a ``RedisError``, so every boundary that retries Redis failures names both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.commands.core import AsyncScript
from redis.typing import EncodableT, KeyT
from typing_extensions import TypeIs

#: A client of one Redis or of a Redis Cluster (``redis+cluster://`` URLs build the latter).
RedisClient = Redis | RedisCluster
#: A pipeline of either kind of client.
AnyPipeline = Pipeline | ClusterPipeline

# Keyless on purpose: KEYS[1] only routes it to the node of the key the caller reads with it.
_TIME_LUA = "return redis.call('TIME')"


def is_cluster(redis: RedisClient) -> TypeIs[RedisCluster]:
    return isinstance(redis, RedisCluster)


def queue_time(pipe: AnyPipeline, key: KeyT) -> None:
    """Add Redis's clock (``[seconds, microseconds]``) to ``pipe``: ``TIME`` on one Redis; on a cluster, the
    clock of the node holding ``key``."""
    if isinstance(pipe, ClusterPipeline):
        pipe.eval(_TIME_LUA, 1, key)
    else:
        pipe.time()


async def queue_script(
    pipe: AnyPipeline, script: AsyncScript, keys: Sequence[KeyT], args: Sequence[EncodableT] = ()
) -> None:
    """Add one run of ``script`` to ``pipe``: ``EVALSHA`` on one Redis (the pipeline loads the script if the
    server lacks it), ``EVAL`` with its text on a cluster."""
    if isinstance(pipe, ClusterPipeline):
        text = script.script if isinstance(script.script, str) else bytes(script.script).decode()
        pipe.eval(text, len(keys), *keys, *args)
    else:
        await script(keys=keys, args=args, client=pipe)


async def ping_every_primary(redis: RedisClient) -> None:
    """PING the Redis, or every master of the cluster; raises what the first that fails raised."""
    if is_cluster(redis):
        await redis.ping(target_nodes=RedisCluster.PRIMARIES)
    else:
        await redis.ping()


def pool_size(redis: RedisClient) -> int:
    """How many connections the client opens at most (to each node, on a cluster)."""
    if is_cluster(redis):
        return int(redis.get_connection_kwargs().get("max_connections") or 100)
    return redis.connection_pool.max_connections


def primaries(redis: RedisClient) -> list[str]:
    """``host:port`` of every master the client knows (one entry for one Redis), for health reports."""
    if is_cluster(redis):
        return sorted(node.name for node in redis.get_primaries())
    options: dict[str, Any] = redis.connection_pool.connection_kwargs
    return [str(options["path"])] if "path" in options else [f"{options.get('host')}:{options.get('port')}"]
