"""The scoreboard on PostgreSQL: seeding leaves the id sequences usable, writes and views work the same."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import httpx
import pytest
from asgi_lifespan import LifespanManager
from redis.asyncio import Redis

from freshviews.core.events import decode
from freshviews.core.keys import Keys
from freshviews.scoreboard.db import open_database
from freshviews.scoreboard.main import create_app
from freshviews.scoreboard.settings import AppSettings
from freshviews.scoreboard.views import registry

pytestmark = pytest.mark.postgres


async def test_scoreboard_on_postgres(
    postgres_url: str, make_settings: Callable[..., AppSettings], redis_url: str, redis: Redis
) -> None:
    settings = make_settings(redis_url, database_url=postgres_url)
    app = create_app(settings)
    async with (
        LifespanManager(app, startup_timeout=60) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(manager.app), base_url="http://test") as client,
    ):
        # Seeded rows carry explicit ids: the first inserts must not collide with them.
        score = await client.post("/api/scores", json={"player_id": 3, "points": 77})
        player = await client.post("/api/players", json={"name": "Pg", "region": "eu", "team_id": 1})
        team = await client.post("/api/teams", json={"name": "Pg team"})
        assert (score.status_code, player.status_code, team.status_code) == (201, 201, 201), score.text
        assert (score.json()["id"], player.json()["id"], team.json()["id"]) == (601, 61, 7)
        assert (await client.post("/api/scores", json={"player_id": 99_999, "points": 1})).status_code == 422
        assert (await client.delete("/api/teams/1")).status_code == 200
        page = (await client.get("/api/players/3")).json()
        assert page["recent"][0] == {"id": 601, "points": 77, "created_at": score.json()["created_at"]}
        assert (await client.get("/healthz")).json()["database"] == "ok"
    # The lifespan's relay drained the outbox on the way out: every change is in the log.
    logged = {
        (c.entity, c.op.value)
        for c in (decode(cast("dict[bytes, bytes]", f)) for _, f in await redis.xrange(Keys().changes))
    }
    assert logged == {("scores", "c"), ("players", "u"), ("players", "c"), ("teams", "c"), ("teams", "d")}

    db = open_database(settings.database_url_resolved())
    try:
        keys = await registry.all_keys(db)
        assert len(keys) == 1 + 8 + 61 + 6
        for key in ("stats/global", "leaderboard/eu", "player/61", "team/7"):
            view_key = registry.parse(key)
            assert (await view_key.view.compute(db, **view_key.params)).model_dump_json()
    finally:
        await db.close()
