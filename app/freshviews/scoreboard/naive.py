"""The naive read routes: each view computed from the database on every request, with the same functions the
subscriber caches. They are the "before" picture the cache is measured against."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from freshviews.scoreboard.bodies import PathId
from freshviews.scoreboard.db import DbDep
from freshviews.scoreboard.models import Region
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


def naive_router() -> APIRouter:
    """``GET /api/stats/global``, ``/api/leaderboard/{region}``, ``/api/players/{id}``, ``/api/teams/{id}``."""
    router = APIRouter(prefix="/api", tags=["naive"])

    @router.get("/stats/global")
    async def stats_global(db: DbDep) -> GlobalStats:
        return await compute_stats_global(db)

    @router.get("/leaderboard/{region}")
    async def leaderboard(region: Region, db: DbDep) -> Leaderboard:
        return await compute_leaderboard(db, region=region)

    @router.get("/players/{player_id}")
    async def player_detail(player_id: PathId, db: DbDep) -> PlayerDetail:
        found = await compute_player(db, player_id=player_id)
        if not isinstance(found, PlayerDetail):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"player {player_id} does not exist")
        return found

    @router.get("/teams/{team_id}")
    async def team_detail(team_id: PathId, db: DbDep) -> TeamDetail:
        found = await compute_team(db, team_id=team_id)
        if not isinstance(found, TeamDetail):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"team {team_id} does not exist")
        return found

    return router
