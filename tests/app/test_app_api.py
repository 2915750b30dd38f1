"""Write routes (status codes, one change per write, published after commit) and the naive read routes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from helpers import free_port
from redis.asyncio import Redis
from sqlalchemy import func, select

from freshviews.core.events import Change, decode
from freshviews.core.keys import Keys
from freshviews.publish.publisher import Publisher
from freshviews.scoreboard.db import Database
from freshviews.scoreboard.main import create_app
from freshviews.scoreboard.models import Player, Score
from freshviews.scoreboard.settings import AppSettings
from freshviews.scoreboard.views import PlayerDetail, compute_leaderboard, compute_player, compute_stats_global

CHANGES = Keys().changes


async def stream(redis: Redis) -> list[Change]:
    return [decode(fields) for _, fields in await redis.xrange(CHANGES)]


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "entity", "op"),
    [
        ("POST", "/api/scores", {"player_id": 3, "points": 250}, 201, "score", "c"),
        ("PATCH", "/api/scores/5", {"points": 7}, 200, "score", "u"),
        ("DELETE", "/api/scores/6", None, 200, "score", "d"),
        ("POST", "/api/players", {"name": "  Ada ", "region": "oc", "team_id": 2}, 201, "player", "c"),
        ("PATCH", "/api/players/4", {"region": "an", "team_id": None}, 200, "player", "u"),
        ("DELETE", "/api/players/4", None, 200, "player", "d"),
        ("POST", "/api/teams", {"name": "Night Owls"}, 201, "team", "c"),
        ("PATCH", "/api/teams/2", {"name": "Day Owls"}, 200, "team", "u"),
        ("DELETE", "/api/teams/2", None, 200, "team", "d"),
    ],
)
async def test_each_write_publishes_exactly_one_change(
    client: httpx.AsyncClient, redis: Redis, method: str, url: str, body: Any, status: int, entity: str, op: str
) -> None:
    response = await client.request(method, url, json=body)
    assert response.status_code == status, response.text
    payload = response.json()
    [change] = await stream(redis)
    assert payload["change_ids"] == [(await redis.xrange(CHANGES))[0][0].decode()]
    assert (change.entity, change.op.value, change.id) == (entity, op, str(payload["id"]))


async def test_a_score_change_carries_the_facts_the_views_need(
    client: httpx.AsyncClient, redis: Redis, db: Database
) -> None:
    player = await compute_player(db, player_id=3)
    assert isinstance(player, PlayerDetail)
    before = player.total
    created = (await client.post("/api/scores", json={"player_id": 3, "points": 250})).json()
    await client.patch(f"/api/scores/{created['id']}", json={"points": 100})
    await client.delete(f"/api/scores/{created['id']}")
    create, update, delete = await stream(redis)
    common = {"player_id": 3, "region": player.region, "team_id": player.team_id}
    assert create.hints == {**common, "delta": 250, "total": before + 250}
    assert update.hints == {**common, "delta": -150, "total": before + 100}
    assert delete.hints == {**common, "delta": -100, "total": before}


async def test_a_region_move_names_both_regions(client: httpx.AsyncClient, redis: Redis, db: Database) -> None:
    player = await compute_player(db, player_id=4)
    assert isinstance(player, PlayerDetail)
    region = "an" if player.region != "an" else "eu"
    await client.patch("/api/players/4", json={"region": region, "team_id": None})
    [change] = await stream(redis)
    assert change.hints["region"] == region
    assert change.hints["old_region"] == player.region
    assert change.hints["old_team_id"] == player.team_id
    assert change.hints["team_id"] is None


async def test_publishing_happens_after_the_commit(
    client: httpx.AsyncClient, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    publish = Publisher.publish

    async def checking(self: Publisher, *changes: Change) -> list[str]:
        # Another connection sees the row only once it is committed.
        async with db.sessionmaker() as session:
            query = select(func.count()).select_from(Score).where(Score.id == int(changes[0].id))
            seen.append(await session.scalar(query) or 0)
        return await publish(self, *changes)

    monkeypatch.setattr(Publisher, "publish", checking)
    response = await client.post("/api/scores", json={"player_id": 3, "points": 1})
    assert response.status_code == 201
    assert seen == [1]


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("PATCH", "/api/scores/999999", {"points": 1}),
        ("DELETE", "/api/scores/999999", None),
        ("PATCH", "/api/players/999999", {"name": "x"}),
        ("DELETE", "/api/players/999999", None),
        ("PATCH", "/api/teams/999999", {"name": "x"}),
        ("DELETE", "/api/teams/999999", None),
    ],
)
async def test_missing_rows_are_404_and_publish_nothing(
    client: httpx.AsyncClient, redis: Redis, method: str, url: str, body: Any
) -> None:
    response = await client.request(method, url, json=body)
    assert response.status_code == 404
    assert "does not exist" in response.json()["detail"]
    assert await stream(redis) == []


@pytest.mark.parametrize(
    ("method", "url", "body", "reason"),
    [
        ("POST", "/api/scores", {"player_id": 3, "points": 100_001}, "less than or equal"),
        ("POST", "/api/scores", {"player_id": 3, "points": -1001}, "greater than or equal"),
        ("POST", "/api/scores", {"player_id": 3}, "Field required"),
        ("POST", "/api/scores", {"player_id": 3, "points": 1, "extra": 1}, "Extra inputs"),
        ("POST", "/api/scores", {"player_id": 999_999, "points": 1}, "player 999999 does not exist"),
        ("POST", "/api/players", {"name": "x", "region": "xx"}, "Input should be"),
        ("POST", "/api/players", {"name": "   ", "region": "eu"}, "at least 1 character"),
        ("POST", "/api/players", {"name": "x", "region": "eu", "team_id": 999}, "team 999 does not exist"),
        ("PATCH", "/api/players/3", {"team_id": 999}, "team 999 does not exist"),
        ("PATCH", "/api/players/3", {}, "at least one of"),
        ("PATCH", "/api/scores/0", {"points": 1}, "greater than or equal"),
        ("POST", "/api/teams", {"name": "x" * 81}, "at most 80"),
    ],
)
async def test_bad_input_is_422_with_a_reason_and_publishes_nothing(
    client: httpx.AsyncClient, redis: Redis, method: str, url: str, body: Any, reason: str
) -> None:
    response = await client.request(method, url, json=body)
    assert response.status_code == 422
    assert reason in response.text
    assert await stream(redis) == []


async def test_deleting_a_player_deletes_its_scores(client: httpx.AsyncClient, db: Database) -> None:
    assert (await client.delete("/api/players/3")).status_code == 200
    async with db.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Score).where(Score.player_id == 3)) == 0


async def test_deleting_a_team_keeps_its_players_and_names_them(
    client: httpx.AsyncClient, redis: Redis, db: Database
) -> None:
    async with db.sessionmaker() as session:
        members = sorted((await session.scalars(select(Player.id).where(Player.team_id == 2))).all())
    assert members
    assert (await client.delete("/api/teams/2")).status_code == 200
    [change] = await stream(redis)
    assert change.hints == {"player_ids": members}
    for player_id in members:
        assert (await client.get(f"/api/players/{player_id}")).json()["team_id"] is None


async def test_bodies_over_the_limit_are_413(client: httpx.AsyncClient, redis: Redis) -> None:
    big = b'{"name": "' + b"x" * 20_000 + b'"}'
    response = await client.post("/api/teams", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length: the limit has to be enforced while the body streams.
        for _ in range(10):
            yield b"x" * 4_000

    response = await client.post("/api/teams", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert await stream(redis) == []
    assert (await client.post("/api/teams", json={"name": "small"})).status_code == 201


async def test_a_dead_redis_does_not_fail_or_slow_the_write(make_settings: Callable[..., AppSettings]) -> None:
    settings = make_settings(f"redis://127.0.0.1:{free_port()}/0")
    app = create_app(settings)
    async with (
        LifespanManager(app, startup_timeout=30) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(manager.app), base_url="http://test") as client,
    ):
        started = time.perf_counter()
        response = await client.post("/api/scores", json={"player_id": 3, "points": 42})
        elapsed = time.perf_counter() - started
        assert response.status_code == 201
        assert response.json()["change_ids"] == []
        assert elapsed < 1.0
        recent = (await client.get("/api/players/3")).json()["recent"]
        assert recent[0]["id"] == response.json()["id"]
        health = await client.get("/healthz")
        assert health.status_code == 503
        assert health.json()["database"] == "ok"
        assert health.json()["redis"].startswith("error")


async def test_publishing_can_be_switched_off(
    make_settings: Callable[..., AppSettings], redis_url: str, redis: Redis
) -> None:
    app = create_app(make_settings(redis_url, publish_enabled=False))
    async with (
        LifespanManager(app, startup_timeout=30) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(manager.app), base_url="http://test") as client,
    ):
        response = await client.post("/api/scores", json={"player_id": 3, "points": 42})
        assert (response.status_code, response.json()["change_ids"]) == (201, [])
    assert await stream(redis) == []


async def test_naive_routes_compute_the_views_from_the_database(client: httpx.AsyncClient, db: Database) -> None:
    stats = await client.get("/api/stats/global")
    assert stats.json() == (await compute_stats_global(db)).model_dump(mode="json")
    board = await client.get("/api/leaderboard/eu")
    assert board.json() == (await compute_leaderboard(db, region="eu")).model_dump(mode="json")
    player = await compute_player(db, player_id=3)
    assert isinstance(player, PlayerDetail)
    assert (await client.get("/api/players/3")).json() == player.model_dump(mode="json")
    assert (await client.get("/api/teams/1")).json()["id"] == 1
    queries = db.queries
    await client.get("/api/stats/global")
    assert db.queries == queries  # the app has its own engine; the test's stays idle


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("/api/players/999999", 404),
        ("/api/teams/999999", 404),
        ("/api/players/0", 422),
        ("/api/players/abc", 422),
        ("/api/leaderboard/zz", 422),
    ],
)
async def test_naive_routes_reject_bad_or_missing_keys(client: httpx.AsyncClient, url: str, status: int) -> None:
    assert (await client.get(url)).status_code == status


async def test_health_and_metrics(client: httpx.AsyncClient) -> None:
    health = await client.get("/healthz")
    assert (health.status_code, health.json()) == (
        200,
        {"status": "ok", "database": "ok", "redis": "ok", "updates": "ok"},
    )
    await client.get("/api/stats/global")
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    line = next(x for x in metrics.text.splitlines() if x.startswith("freshviews_db_queries_total "))
    assert float(line.split()[1]) > 0
