"""The subscriber and serving suites' fixtures, on the session's Redis Cluster instead of one Redis.

``redis_url`` is the cluster's ``redis+cluster://`` URL (every master emptied before each test) and ``redis`` a
cluster client; every other fixture is the suites' own, so a test imported here from tests/worker or
tests/serving runs unchanged against the cluster.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio.cluster import RedisCluster

from tests.serving.conftest import open_client, stack, start_subscriber
from tests.support.redis_servers import ClusterNodes
from tests.worker.conftest import make_subscriber, publisher, updates, world

__all__ = ["make_subscriber", "open_client", "publisher", "stack", "start_subscriber", "updates", "world"]


@pytest.fixture
async def redis_url(redis_cluster: ClusterNodes) -> str:
    """The session cluster's URL, every master emptied first."""
    await redis_cluster.flush()
    return redis_cluster.cluster_url()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[RedisCluster]:
    """A cluster client for the clean session cluster."""
    client = RedisCluster.from_url(redis_url.replace("+cluster", "", 1))
    await client.initialize()  # its pub/sub (the updates fixture) needs the slots before its first command
    try:
        yield client
    finally:
        await client.aclose()
