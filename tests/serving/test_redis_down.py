"""Redis dead or frozen: every read route answers 503 with Retry-After and a reason, quickly; never a 500 or a
hang. The update subscription's state shows in /healthz and comes back by itself."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from redis.asyncio import Redis

from freshviews.core.embedded import EmbeddedRedis
from freshviews.core.keys import Keys
from freshviews.scoreboard.main import create_app
from freshviews.scoreboard.settings import AppSettings
from tests.support.helpers import wait_until
from tests.support.proxy import FaultProxy
from tests.support.serving import OpenClient, put, serving_of

READS = [
    ("/cache/item/1", {}),
    ("/cache/item/1", {"If-None-Match": '"1"'}),
    ("/cache/item/2", {}),  # a miss: the refresh request cannot be sent either
    ("/cache?key=item/1&key=color/red", {}),
    ("/cache/stream?key=item/1", {}),
    ("/cache/item/1?min_version=1", {}),
]


async def _all_unavailable(client: httpx.AsyncClient, bound: float) -> None:
    for path, headers in READS:
        started = time.monotonic()
        response = await client.get(path, headers=headers)
        elapsed = time.monotonic() - started
        assert response.status_code == 503, (path, response.status_code, response.text)
        assert response.headers["retry-after"] == "1", path
        assert response.json()["detail"].startswith("cache unavailable"), (path, response.text)
        assert elapsed < bound, f"{path} took {elapsed:.2f}s"


async def test_a_dead_redis_gives_503_quickly_and_reads_recover_after_it_restarts(
    open_client: OpenClient, redis_server: EmbeddedRedis, redis: Redis, keys: Keys
) -> None:
    client, app = await open_client()
    await put(redis, keys, "item/1", {"id": 1})
    assert (await client.get("/cache/item/1")).status_code == 200
    redis_server.kill()
    # The copy in memory is served only while the update subscription is heard from: within a second it stops.
    await _memory_off(app)
    await _all_unavailable(client, bound=2.0)
    redis_server.restart(wipe=True)
    async with Redis.from_url(redis_server.url) as fresh:  # the fixture's client still holds the dead socket
        await put(fresh, keys, "item/1", {"id": 1, "back": True})
    await wait_until(lambda: _ok(client, "/cache/item/1"), 5, message="reads did not recover after the restart")


async def test_a_frozen_redis_gives_503_within_the_read_timeout(
    open_client: OpenClient, redis_server: EmbeddedRedis, redis: Redis, keys: Keys
) -> None:
    proxy = FaultProxy(redis_server.port)
    url = await proxy.start()
    try:
        client, app = await open_client(url=url, cache_redis_timeout=0.3)
        await put(redis, keys, "item/1", {"id": 1})
        assert (await client.get("/cache/item/1")).status_code == 200
        proxy.freeze()  # connections stay open, nothing answers: the worst case for a client without timeouts
        await _memory_off(app)
        await _all_unavailable(client, bound=1.5)
        proxy.thaw()
        await wait_until(lambda: _ok(client, "/cache/item/1"), 5, message="reads did not recover after the thaw")
    finally:
        await proxy.close()


async def test_healthz_shows_a_dead_update_subscription_and_its_return(
    tmp_path: Path, redis_url: str, redis_server: EmbeddedRedis
) -> None:
    settings = AppSettings(
        data_dir=tmp_path,
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'scoreboard.db'}",
        seed_players=20,
        seed_teams=2,
        seed_scores=50,
        sse_reconnect_max=0.2,
    )
    app = create_app(settings)
    async with (
        LifespanManager(app, startup_timeout=30) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(manager.app), base_url="http://test") as client,
    ):
        assert (await client.get("/healthz")).json()["updates"] == "ok"
        redis_server.kill()

        async def subscription_down() -> bool:
            health = await client.get("/healthz")
            return health.status_code == 503 and health.json()["updates"].startswith("error: update subscription")

        await wait_until(subscription_down, 10, message="/healthz did not report the lost subscription")
        redis_server.restart(wipe=True)

        async def healthy() -> bool:
            health = await client.get("/healthz")
            return health.status_code == 200 and health.json()["updates"] == "ok"

        await wait_until(healthy, 10, message="the subscription did not come back")


async def _memory_off(app: FastAPI) -> None:
    started = time.monotonic()
    await wait_until(lambda: not serving_of(app).memory.trusted, 3, message="memory still trusted after Redis went")
    assert time.monotonic() - started < 2.5


async def _ok(client: httpx.AsyncClient, path: str) -> bool:
    return (await client.get(path)).status_code == 200
