"""The TTL cache a user would pick instead of freshviews (benchmark 9's baselines), as an app to serve.

The scoreboard's four views, computed with the same functions the subscriber caches, behind a TTL cache with a
Redis backend, keyed on the request path: ``GET /ttl/stats/global``, ``/ttl/leaderboard/{region}``,
``/ttl/player/{id}``, ``/ttl/team/{id}``. Beside them the scoreboard's write routes (no capture: nothing records a
change) and ``/metrics`` with the database statements counted as for the scoreboard, plus the computes per view
(``ttl_computes_total``), from which the benchmark reads the stampede at expiry.

``TTL_LIBRARY`` picks the cache: ``fastapi-cache2`` (``@cache(expire=...)``) or ``cashews``
(``@cache(ttl=...)``); ``TTL_SECONDS`` its time to live. Served by uvicorn::

    python -m uvicorn tests.bench.ttl_app:create --factory --port 8000
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from redis.asyncio import Redis

from freshviews.core.settings import load
from freshviews.scoreboard.bodies import PathId
from freshviews.scoreboard.db import DbDep, open_database
from freshviews.scoreboard.models import Region
from freshviews.scoreboard.seed import ensure_seeded
from freshviews.scoreboard.settings import AppSettings
from freshviews.scoreboard.views import (
    GlobalStats,
    Leaderboard,
    PlayerDetail,
    TeamDetail,
    compute_leaderboard,
    compute_player,
    compute_stats_global,
    compute_team,
)
from freshviews.scoreboard.writes import write_router

COMPUTES = Counter("ttl_computes_total", "Views computed by the TTL baseline (a miss or an expired entry)", ["view"])

T = TypeVar("T")
Decorator = Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]


def _by_path(
    func: Callable[..., Any],
    namespace: str = "",
    *,
    request: Request | None = None,
    response: Response | None = None,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
) -> str:
    # fastapi-cache2's default key includes the repr of every argument, the database dependency's too.
    return f"{namespace}:{request.url.path if request is not None else func.__name__}"


def _library(name: str, ttl: int, redis_url: str) -> tuple[Decorator, Callable[[Redis], Awaitable[None]]]:
    """The library's decorator for a view, and what the lifespan calls to connect it."""
    if name == "fastapi-cache2":
        from fastapi_cache import FastAPICache
        from fastapi_cache.backends.redis import RedisBackend
        from fastapi_cache.decorator import cache as fastapi_cache

        async def connect(redis: Redis) -> None:
            FastAPICache.init(RedisBackend(redis), prefix="ttl", key_builder=_by_path)

        return fastapi_cache(expire=ttl), connect
    if name == "cashews":
        from cashews import cache as cashews_cache

        async def setup(_redis: Redis) -> None:
            cashews_cache.setup(redis_url)

        # Keyed on the view's own arguments (its path parameters), which is the request path here.
        return cashews_cache(ttl=f"{ttl}s"), setup
    raise SystemExit(f"TTL_LIBRARY must be fastapi-cache2 or cashews, not {name!r}")


async def _stats(db: Any) -> GlobalStats:
    COMPUTES.labels("stats").inc()
    return await compute_stats_global(db)


async def _leaderboard(db: Any, region: str) -> Leaderboard:
    COMPUTES.labels("leaderboard").inc()
    return await compute_leaderboard(db, region=region)


async def _player(db: Any, player_id: int) -> PlayerDetail | None:
    COMPUTES.labels("player").inc()
    found = await compute_player(db, player_id=player_id)
    return found if isinstance(found, PlayerDetail) else None


async def _team(db: Any, team_id: int) -> TeamDetail | None:
    COMPUTES.labels("team").inc()
    found = await compute_team(db, team_id=team_id)
    return found if isinstance(found, TeamDetail) else None


def _decorated_routes(cached: Decorator) -> APIRouter:
    """fastapi-cache2: the decorator goes on the route itself (it reads the request for its key)."""
    router = APIRouter(prefix="/ttl")

    @router.get("/stats/global")
    @cached
    async def stats_global(db: DbDep) -> GlobalStats:
        return await _stats(db)

    @router.get("/leaderboard/{region}")
    @cached
    async def leaderboard(region: Region, db: DbDep) -> Leaderboard:
        return await _leaderboard(db, region)

    @router.get("/player/{player_id}")
    @cached
    async def player(player_id: PathId, db: DbDep) -> PlayerDetail:
        return _found(await _player(db, player_id), f"player {player_id}")

    @router.get("/team/{team_id}")
    @cached
    async def team(team_id: PathId, db: DbDep) -> TeamDetail:
        return _found(await _team(db, team_id), f"team {team_id}")

    return router


def _keyed_routes(cached: Decorator) -> APIRouter:
    """cashews: the decorator goes on a function of the key's parameters alone (cashews keys on the function's
    qualified name and its arguments; the database, one per process, comes from the lifespan's holder)."""
    router = APIRouter(prefix="/ttl")

    async def stats_alone() -> GlobalStats:
        return await _stats(_DB["db"])

    async def leaderboard_by_region(region: str) -> Leaderboard:
        return await _leaderboard(_DB["db"], region)

    async def player_by_id(player_id: int) -> PlayerDetail | None:
        return await _player(_DB["db"], player_id)

    async def team_by_id(team_id: int) -> TeamDetail | None:
        return await _team(_DB["db"], team_id)

    stats_cached, leaderboard_cached = cached(stats_alone), cached(leaderboard_by_region)
    player_cached, team_cached = cached(player_by_id), cached(team_by_id)

    @router.get("/stats/global")
    async def stats_global() -> GlobalStats:
        return cast("GlobalStats", await stats_cached())

    @router.get("/leaderboard/{region}")
    async def leaderboard(region: Region) -> Leaderboard:
        return cast("Leaderboard", await leaderboard_cached(region))

    @router.get("/player/{player_id}")
    async def player(player_id: PathId) -> PlayerDetail:
        return _found(cast("PlayerDetail | None", await player_cached(player_id)), f"player {player_id}")

    @router.get("/team/{team_id}")
    async def team(team_id: PathId) -> TeamDetail:
        return _found(cast("TeamDetail | None", await team_cached(team_id)), f"team {team_id}")

    return router


_DB: dict[str, Any] = {}


def _found(value: T | None, what: str) -> T:
    if value is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{what} does not exist")
    return value


def create() -> FastAPI:
    settings = load(AppSettings)
    library, ttl = os.environ.get("TTL_LIBRARY", "fastapi-cache2"), int(os.environ.get("TTL_SECONDS", "10"))
    redis_url = os.environ["REDIS_URL"]
    cached, connect = _library(library, ttl, redis_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        db = open_database(settings.database_url_resolved())
        await ensure_seeded(db, settings)
        redis = Redis.from_url(redis_url)
        await connect(redis)
        _DB["db"] = db
        try:
            yield {"db": db, "settings": settings}
        finally:
            await redis.aclose()
            await db.close()

    app = FastAPI(title=f"scoreboard behind {library} at {ttl} s", lifespan=lifespan)
    app.include_router(write_router())
    app.include_router(_keyed_routes(cached) if library == "cashews" else _decorated_routes(cached))

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
