"""Serving.health() and the scoreboard's /healthz fail when reads fail: a keyed read through the read deadline,
not a PING, which a Redis refusing every read (a Cluster node answering MOVED, a user without key access) still
answers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from redis.asyncio import Redis
from redis.exceptions import MovedError, ResponseError

from freshviews.core.connections import create_redis
from freshviews.core.embedded import EmbeddedRedis
from freshviews.core.keys import Keys
from freshviews.scoreboard.main import create_app
from freshviews.scoreboard.settings import AppSettings
from freshviews.serving import Serving, ServingSettings
from freshviews.serving.runtime import CacheUnavailableError
from tests.support.helpers import wait_until
from tests.support.proxy import FaultProxy
from tests.support.redis_servers import GOSSIP, SLOTS, StartClusterNodes
from tests.support.serving import FAST, OpenClient, put, serving_of


@pytest.fixture
async def cluster_ports(start_cluster_nodes: StartClusterNodes) -> list[int]:
    """Two Redis Cluster nodes, not yet joined, on free ports."""
    nodes = start_cluster_nodes(2)
    await nodes.wait_up()
    return nodes.ports


@asynccontextmanager
async def node_owning_no_slot(ports: list[int]) -> AsyncIterator[str]:
    """Joins the two nodes with the second owning every slot; the URL of the first, which answers MOVED to every
    keyed command and PONG to PING."""
    first, second = (Redis(port=port) for port in ports)
    try:
        await second.execute_command("CLUSTER ADDSLOTS", *range(SLOTS))
        await first.execute_command("CLUSTER MEET", "127.0.0.1", ports[1])

        async def moved() -> bool:
            try:
                await first.hget(Keys().value("item/1"), "v")
            except MovedError:
                return True
            except ResponseError:  # CLUSTERDOWN until the nodes agree
                return False
            return False

        await wait_until(moved, GOSSIP, message="the first node never learnt who owns the slots")
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        await first.aclose()
        await second.aclose()


async def test_health_is_ok_while_reads_work(open_client: OpenClient) -> None:
    _, app = await open_client()
    assert await serving_of(app).health() == {"redis": "ok", "updates": "ok"}


async def test_a_cluster_node_answering_moved_fails_health_as_it_fails_reads(cluster_ports: list[int]) -> None:
    async with node_owning_no_slot(cluster_ports) as url:
        redis = create_redis(url, timeout=2.0)
        try:
            async with Serving(redis=redis, settings=ServingSettings(**FAST)) as serving:
                assert await redis.ping()  # what /healthz used to check
                with pytest.raises(CacheUnavailableError):
                    await serving.read(["item/1"], wait=False)
                health = await serving.health()
        finally:
            await redis.aclose()
    assert health["redis"].startswith("error: cache unavailable: MovedError: "), health
    assert f":{cluster_ports[1]}" in health["redis"]  # the node that owns the slots, as Redis said


async def test_health_answers_within_the_read_deadline_when_redis_freezes(
    open_client: OpenClient, redis_server: EmbeddedRedis
) -> None:
    proxy = FaultProxy(redis_server.port)
    url = await proxy.start()
    try:
        _, app = await open_client(url=url, cache_redis_timeout=0.3)
        proxy.freeze()
        started = time.monotonic()
        health = await serving_of(app).health()
        elapsed = time.monotonic() - started
    finally:
        proxy.thaw()
        await proxy.close()
    assert health["redis"] == "error: cache unavailable: TimeoutError"
    # The read deadline (0.3 s) is the promise; 0.5 s of margin for a loaded machine.
    assert elapsed < 0.8, f"health took {elapsed:.2f}s"


async def test_healthz_fails_while_every_read_is_refused_and_recovers(
    tmp_path: Path, redis_url: str, redis: Redis, keys: Keys
) -> None:
    settings = AppSettings(
        data_dir=tmp_path,
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'scoreboard.db'}",
        seed_players=20,
        seed_teams=2,
        seed_scores=50,
    )
    await put(redis, keys, "stats/global", {"players": 20})
    app = create_app(settings)
    async with (
        LifespanManager(app, startup_timeout=30) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(manager.app), base_url="http://test") as client,
    ):
        assert (await client.get("/healthz")).status_code == 200
        # Every keyed command is refused (NOPERM) while PING and the update subscription go on working.
        await redis.execute_command("ACL SETUSER default resetkeys")
        try:
            health = await client.get("/healthz")
            read = await client.get("/cache/stats/global")
        finally:
            await redis.execute_command("ACL SETUSER default allkeys")
        assert read.status_code == 503  # memory is empty: the scoreboard's app never read the key
        assert health.status_code == 503
        assert health.json()["redis"].startswith("error: cache unavailable: NoPermissionError"), health.json()
        assert (health.json()["database"], health.json()["updates"]) == ("ok", "ok")
        assert (await client.get("/healthz")).status_code == 200  # the next check, once reads work again
