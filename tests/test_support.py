"""The toolbox's builders that no product test exercises yet still do what they say."""

from __future__ import annotations

from redis.asyncio import RedisCluster

from tests.support.redis_servers import StartClusterNodes


async def test_six_cluster_nodes_form_three_masters_with_a_replica_each(start_cluster_nodes: StartClusterNodes) -> None:
    nodes = start_cluster_nodes(6)
    await nodes.form(replicas=1)
    cluster = RedisCluster(host="127.0.0.1", port=nodes.ports[0])
    try:
        await cluster.initialize()
        assert len(cluster.get_primaries()) == 3
        assert len(cluster.get_replicas()) == 3
        for n in range(20):  # keys over every master's slots
            await cluster.set(f"k{n}", n)
            assert await cluster.get(f"k{n}") == str(n).encode()
    finally:
        await cluster.aclose()
