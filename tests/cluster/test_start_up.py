"""Which client by configuration, and a mismatch refused at start-up in one line that names the fix; the health
check reaches every master."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster

from freshviews.core.clients import primaries
from freshviews.core.connections import create_redis
from freshviews.core.embedded import EmbeddedRedis
from freshviews.core.settings import ConfigError, RedisSettings, load
from freshviews.worker.check import check
from freshviews.worker.settings import SubscriberSettings
from tests.support.redis_servers import ClusterNodes
from tests.support.serving import OpenClient, serving_of
from tests.worker.test_cli import VIEWS, _run


def test_a_redis_url_at_a_cluster_node_is_refused_with_the_cluster_url_to_use(
    redis_cluster: ClusterNodes, tmp_path: Path
) -> None:
    port = redis_cluster.ports[0]
    done = _run("subscriber", "--burst", "--views", VIEWS, redis_url=f"redis://127.0.0.1:{port}/0", data_dir=tmp_path)
    assert done.returncode == 2, done.stderr[-1000:]
    last = done.stderr.strip().splitlines()[-1]
    assert f"is a Redis Cluster node: use REDIS_URL=redis+cluster://127.0.0.1:{port}" in last, last
    assert "Traceback" not in done.stderr


def test_a_cluster_url_at_a_single_redis_is_refused_saying_so(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    url = f"redis+cluster://127.0.0.1:{redis_server.port}"
    done = _run("subscriber", "--burst", "--views", VIEWS, redis_url=url, data_dir=tmp_path)
    assert done.returncode == 2, done.stderr[-1000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "is not a Redis Cluster" in last, last
    assert "use a redis:// URL" in last, last
    assert "Traceback" not in done.stderr


def test_a_cluster_url_builds_a_cluster_client_and_has_one_database() -> None:
    assert isinstance(create_redis("redis+cluster://127.0.0.1:7000"), RedisCluster)
    assert load(RedisSettings, redis_url="redis+cluster://127.0.0.1:7000/0").redis_url
    with pytest.raises(ConfigError, match="REDIS_URL: a Redis Cluster has one database"):
        load(RedisSettings, redis_url="redis+cluster://127.0.0.1:7000/3")


async def test_health_reads_and_pings_every_master(open_client: OpenClient, redis_cluster: ClusterNodes) -> None:
    _, app = await open_client()
    serving = serving_of(app)
    assert await serving.health() == {"redis": "ok", "updates": "ok"}
    masters = await redis_cluster.masters()
    assert len(masters) == 3
    assert primaries(serving.redis) == sorted(f"127.0.0.1:{port}" for port in masters)


async def test_check_pings_every_master_and_names_them(redis: RedisCluster, redis_cluster: ClusterNodes) -> None:
    health = await check(redis, SubscriberSettings(redis_url=redis_cluster.cluster_url()))
    masters = sorted(f"127.0.0.1:{port}" for port in await redis_cluster.masters())
    assert health.details["redis_primaries"] == masters
    assert not [problem for problem in health.problems if "master" in problem], health.problems
