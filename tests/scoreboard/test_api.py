"""Write routes (status codes, the changes each write leaves in its transaction, ids parsed canonically) and the
naive read routes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from redis.asyncio import Redis
from sqlalchemy import func, select

from freshviews.core.keys import Keys
from freshviews.outbox import outbox_status
from freshviews.scoreboard.db import Database
from freshviews.scoreboard.main import create_app
from freshviews.scoreboard.models import OUTBOX, Player, Score
from freshviews.scoreboard.settings import AppSettings
from freshviews.scoreboard.views import PlayerDetail, compute_leaderboard, compute_player, compute_stats_global
from tests.support.changes import Log
from tests.support.helpers import free_port

CHANGES = Keys().changes


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "changes"),
    [
        ("POST", "/api/scores", {"player_id": 3, "points": 250}, 201, [("scores", "c"), ("players", "u")]),
        ("PATCH", "/api/scores/5", {"points": 7}, 200, [("scores", "u"), ("players", "u")]),
        ("DELETE", "/api/scores/6", None, 200, [("scores", "d"), ("players", "u")]),
        ("POST", "/api/players", {"name": "  Ada ", "region": "oc", "team_id": 2}, 201, [("players", "c")]),
        ("PATCH", "/api/players/4", {"region": "an", "team_id": None}, 200, [("players", "u")]),
        ("DELETE", "/api/players/4", None, 200, [("players", "d")]),
        ("POST", "/api/teams", {"name": "Night Owls"}, 201, [("teams", "c")]),
        ("PATCH", "/api/teams/2", {"name": "Day Owls"}, 200, [("teams", "u")]),
    ],
)
async def test_each_write_leaves_the_changes_of_the_rows_it_wrote(
    client: httpx.AsyncClient, log: Log, method: str, url: str, body: Any, status: int, changes: list[Any]
) -> None:
    response = await client.request(method, url, json=body)
    assert response.status_code == status, response.text
    captured = await log.new()
    assert sorted((c.entity, c.op.value) for c in captured) == sorted(changes)
    assert all(c.origin and c.origin.startswith("outbox:") for c in captured)


async def test_a_score_write_moves_its_players_total_and_says_how(
    client: httpx.AsyncClient, log: Log, db: Database
) -> None:
    player = await compute_player(db, player_id=3)
    assert isinstance(player, PlayerDetail)
    before = player.total
    created = (await client.post("/api/scores", json={"player_id": 3, "points": 250})).json()
    await client.patch(f"/api/scores/{created['id']}", json={"points": 100})
    await client.delete(f"/api/scores/{created['id']}")
    totals = [
        ((c.before or {}).get("total"), (c.after or {}).get("total")) for c in await log.new() if c.entity == "players"
    ]
    assert totals == [(before, before + 250), (before + 250, before + 100), (before + 100, before)]
    async with db.sessionmaker() as session:
        summed = await session.scalar(select(func.coalesce(func.sum(Score.points), 0)).where(Score.player_id == 3))
        count = await session.scalar(select(func.count()).select_from(Score).where(Score.player_id == 3))
        row = await session.get(Player, 3)
    assert row is not None
    assert (row.total, row.score_count) == (summed, count)


async def test_a_region_move_names_both_regions(client: httpx.AsyncClient, log: Log, db: Database) -> None:
    player = await compute_player(db, player_id=4)
    assert isinstance(player, PlayerDetail)
    region = "an" if player.region != "an" else "eu"
    await client.patch("/api/players/4", json={"region": region, "team_id": None})
    [change] = await log.new()
    assert (change.before or {})["region"] == player.region
    assert (change.after or {})["region"] == region
    assert ((change.before or {})["team_id"], (change.after or {})["team_id"]) == (player.team_id, None)


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
async def test_missing_rows_are_404_and_leave_no_change(
    client: httpx.AsyncClient, log: Log, method: str, url: str, body: Any
) -> None:
    response = await client.request(method, url, json=body)
    assert response.status_code == 404
    assert "does not exist" in response.json()["detail"]
    assert await log.new() == []


@pytest.mark.parametrize(
    ("method", "url", "body", "reason"),
    [
        ("POST", "/api/scores", {"player_id": 3, "points": 100_001}, "less than or equal"),
        ("POST", "/api/scores", {"player_id": 3, "points": -1001}, "greater than or equal"),
        ("POST", "/api/scores", {"player_id": 3}, "Field required"),
        ("POST", "/api/scores", {"player_id": 3, "points": 1, "extra": 1}, "Extra inputs"),
        ("POST", "/api/scores", {"player_id": 999_999, "points": 1}, "player 999999 does not exist"),
        ("POST", "/api/scores", {"player_id": True, "points": 1}, "must be an integer id"),
        ("POST", "/api/scores", {"player_id": 3.0, "points": 1}, "must be an integer id"),
        ("POST", "/api/scores", {"player_id": "03", "points": 1}, "not a canonical integer"),
        ("POST", "/api/scores", {"player_id": 3, "points": True}, "valid integer"),
        ("POST", "/api/players", {"name": "x", "region": "xx"}, "Input should be"),
        ("POST", "/api/players", {"name": "   ", "region": "eu"}, "at least 1 character"),
        ("POST", "/api/players", {"name": "x", "region": "eu", "team_id": 999}, "team 999 does not exist"),
        ("PATCH", "/api/players/3", {"team_id": 999}, "team 999 does not exist"),
        ("PATCH", "/api/players/3", {}, "at least one of"),
        ("PATCH", "/api/scores/0", {"points": 1}, "outside [1,"),
        ("POST", "/api/teams", {"name": "x" * 81}, "at most 80"),
    ],
)
async def test_bad_input_is_422_with_a_reason_and_leaves_no_change(
    client: httpx.AsyncClient, log: Log, method: str, url: str, body: Any, reason: str
) -> None:
    response = await client.request(method, url, json=body)
    assert response.status_code == 422
    assert reason in response.text
    assert await log.new() == []


@pytest.mark.parametrize("spelling", ["03", "+3", "3.0", "3_0", "%203", "3%20", "0x3", "-3", "99999999999999999"])
async def test_ids_are_parsed_by_the_rule_the_cache_keys_use(client: httpx.AsyncClient, spelling: str) -> None:
    for url in (f"/api/players/{spelling}", f"/api/teams/{spelling}", f"/cache/player/{spelling}"):
        response = await client.get(url)
        assert response.status_code == 422, (url, response.text)
    assert (await client.get("/api/players/3")).status_code == 200


async def test_deleting_a_player_deletes_its_scores(client: httpx.AsyncClient, db: Database) -> None:
    assert (await client.delete("/api/players/3")).status_code == 200
    async with db.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Score).where(Score.player_id == 3)) == 0


async def test_deleting_a_team_keeps_its_players_and_each_move_is_a_change(
    client: httpx.AsyncClient, log: Log, db: Database
) -> None:
    async with db.sessionmaker() as session:
        members = sorted((await session.scalars(select(Player.id).where(Player.team_id == 2))).all())
    assert members
    assert (await client.delete("/api/teams/2")).status_code == 200
    captured = await log.new()
    moved = sorted(int(c.id) for c in captured if c.entity == "players")
    assert moved == members
    assert all(
        (c.before or {})["team_id"] == 2 and (c.after or {})["team_id"] is None
        for c in captured
        if c.entity == "players"
    )
    assert [(c.entity, c.op.value) for c in captured if c.entity == "teams"] == [("teams", "d")]
    for player_id in members:
        assert (await client.get(f"/api/players/{player_id}")).json()["team_id"] is None


async def test_bodies_over_the_limit_are_413(client: httpx.AsyncClient, log: Log) -> None:
    big = b'{"name": "' + b"x" * 20_000 + b'"}'
    response = await client.post("/api/teams", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length: the limit has to be enforced while the body streams.
        for _ in range(10):
            yield b"x" * 4_000

    response = await client.post("/api/teams", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert await log.new() == []
    assert (await client.post("/api/teams", json={"name": "small"})).status_code == 201


async def test_a_dead_redis_neither_fails_nor_slows_the_write_and_the_change_waits(
    make_settings: Callable[..., AppSettings], db: Database
) -> None:
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
        # A write does not touch Redis at all; 1 s is a bound a loaded machine meets for a local SQLite write.
        assert elapsed < 1.0
        recent = (await client.get("/api/players/3")).json()["recent"]
        assert recent[0]["id"] == response.json()["id"]
        health = await client.get("/healthz")
        assert health.status_code == 503
        assert health.json()["database"] == "ok"
        assert health.json()["redis"].startswith("error")
    # The change is not lost: it waits in the outbox for a relay that can reach Redis.
    assert (await outbox_status(db.engine, OUTBOX)).rows == 2


async def test_capture_can_be_switched_off(
    make_settings: Callable[..., AppSettings], redis_url: str, redis: Redis, db: Database
) -> None:
    app = create_app(make_settings(redis_url, capture=False))
    async with (
        LifespanManager(app, startup_timeout=30) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(manager.app), base_url="http://test") as client,
    ):
        assert (await client.post("/api/scores", json={"player_id": 3, "points": 42})).status_code == 201
    assert (await outbox_status(db.engine, OUTBOX)).rows == 0
    assert await redis.xlen(CHANGES) == 0


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
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    await client.get("/api/stats/global")
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    line = next(x for x in metrics.text.splitlines() if x.startswith("freshviews_db_queries_total "))
    assert float(line.split()[1]) > 0


HOSTILE_BODIES = [
    b'{"player_id": 1e309, "points": 1}',
    b'{"player_id": 3, "points": NaN}',
    b'{"player_id": 3, "points": Infinity}',
    b'{"player_id": 3, "points": -Infinity}',
    b'{"name": "\\ud800", "region": "eu"}',
    b'{"\\udfff": 1, "name": "x", "region": "eu"}',
    b'{"player_id": ' + b"9" * 5000 + b', "points": 1}',
    b'{"player_id": 3, "points": ' + b"9" * 300 + b"}",
    b"[" * 5000 + b"]" * 5000,
    b'{"name": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    # The same values in the fields each route accepts on its own, so that each reaches that field's validation.
    b'{"name": "\\ud800"}',
    b'{"name": "\\udc00x", "region": "eu", "team_id": 1}',
    b'{"points": "\\ud800"}',
    b'{"points": 1e309}',
    b'{"points": NaN}',
    b'{"team_id": Infinity}',
    b'{"team_id": ' + b"9" * 5000 + b"}",
    b'{"points": -' + b"9" * 5000 + b"}",
    b'{"region": "\\ud800"}',
    b'{"name": "x", "region": "eu", "team_id": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b"\xff\xfe\x00",
    b"",
]
WRITE_ROUTES = [
    ("POST", "/api/scores"),
    ("PATCH", "/api/scores/5"),
    ("POST", "/api/players"),
    ("PATCH", "/api/players/4"),
    ("POST", "/api/teams"),
    ("PATCH", "/api/teams/2"),
]


@pytest.mark.parametrize(("method", "url"), WRITE_ROUTES)
async def test_hostile_bodies_get_a_4xx_with_a_reason_never_a_500(
    client: httpx.AsyncClient, log: Log, method: str, url: str
) -> None:
    for body in HOSTILE_BODIES:
        response = await client.request(method, url, content=body, headers={"content-type": "application/json"})
        assert 400 <= response.status_code < 500, (body[:40], response.status_code, response.text[:200])
        assert response.json()["detail"], body[:40]
    assert await log.new() == []
