"""The scoreboard app (app/main.py) wires the read side: batch, stream and miss routes over real sockets."""

from __future__ import annotations

from pathlib import Path

import httpx
from redis.asyncio import Redis

from freshviews.core.keys import Keys
from freshviews.scoreboard.main import create_app
from freshviews.scoreboard.settings import AppSettings
from tests.support.serving import live_server, put
from tests.support.sse import SSEReader


async def test_the_scoreboard_serves_the_stream_the_batch_and_misses(
    tmp_path: Path, redis_url: str, redis: Redis, keys: Keys
) -> None:
    settings = AppSettings(
        data_dir=tmp_path,
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'scoreboard.db'}",
        seed_players=20,
        seed_teams=2,
        seed_scores=50,
        cache_miss_wait=0.1,
    )
    async with live_server(create_app(settings)) as base_url, httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        miss = await http.get("/cache/team/1")
        assert miss.status_code == 503  # no subscriber runs here: requested, not computed by the app
        assert await redis.xlen(keys.refresh) == 1
        version = await put(redis, keys, "stats/global", {"players": 20})
        batch = await http.get("/cache", params=[("key", "stats/global"), ("key", "team/x")])
        assert batch.json()["items"]["stats/global"] == {"status": 200, "version": version, "data": {"players": 20}}
        assert batch.json()["items"]["team/x"]["status"] == 422
        async with http.stream("GET", "/cache/stream", params={"key": "stats/global"}) as response:
            sse = SSEReader(response)
            assert (await sse.next()).id == str(version)
            newer = await put(redis, keys, "stats/global", {"players": 21})
            assert (await sse.next()).json() == {"key": "stats/global", "version": newer, "data": {"players": 21}}
