"""The scoreboard's HTTP API: write routes that publish one change each after commit, and naive read routes.

Every write commits first and publishes afterwards: a change is never announced for a row that could still
roll back, and a Redis outage costs the cache some freshness (repaired by the sweep), never the write.
The read routes compute from the database on every request, with the same functions the subscriber caches;
they are the "before" picture the cache is measured against.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from freshviews.core.events import Change, HintValue, Operation
from freshviews.publish.publisher import Publisher, get_publisher
from freshviews.scoreboard.db import Database
from freshviews.scoreboard.models import Player, Region, Score, Team, as_utc, utcnow
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

logger = logging.getLogger(__name__)

#: A deleted team's member ids travel in its change (they no longer point at the team); beyond this many the
#: hint is left out and the sweep refreshes those players.
MAX_MEMBER_HINT = 2_000
MAX_ID = 2**53 - 1
# Spelled out: Starlette renamed its constant for 422 between the versions we support.
UNPROCESSABLE = 422

Hints = dict[str, HintValue | list[HintValue]]

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=80)]
Points = Annotated[int, Field(ge=-1000, le=100_000)]
RowId = Annotated[int, Field(ge=1, le=MAX_ID)]
PathId = Annotated[int, Path(ge=1, le=MAX_ID)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScoreIn(_Body):
    player_id: RowId
    points: Points


class ScorePatch(_Body):
    points: Points


class PlayerIn(_Body):
    name: Name
    region: Region
    team_id: RowId | None = None


class PlayerPatch(_Body):
    name: Name | None = None
    region: Region | None = None
    #: Explicit null leaves the team; leaving the field out keeps it.
    team_id: RowId | None = None


class TeamIn(_Body):
    name: Name


class ScoreOut(BaseModel):
    id: int
    player_id: int
    points: int
    created_at: datetime
    change_ids: list[str]


class PlayerOut(BaseModel):
    id: int
    name: str
    region: str
    team_id: int | None
    created_at: datetime
    change_ids: list[str]


class TeamOut(BaseModel):
    id: int
    name: str
    change_ids: list[str]


def get_db(request: Request) -> Database:
    """FastAPI dependency: the :class:`Database` the app's lifespan put in its state as ``db``."""
    db = getattr(request.state, "db", None)
    if not isinstance(db, Database):
        raise RuntimeError("no Database in the app state: yield {'db': Database(...)} from the lifespan")
    return db


async def get_session(db: Annotated[Database, Depends(get_db)]) -> AsyncIterator[AsyncSession]:
    async with db.sessionmaker() as session:
        yield session


DbDep = Annotated[Database, Depends(get_db)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]


async def _begin_write(session: AsyncSession) -> None:
    # SQLite's driver starts its transaction at the first INSERT/UPDATE, so what we read before that could
    # change underneath us; IMMEDIATE takes the write lock first, which makes the hints (old region, new total)
    # exact. PostgreSQL gets the same from the row locks (FOR UPDATE) below.
    if session.get_bind().dialect.name == "sqlite":
        await session.execute(text("BEGIN IMMEDIATE"))


async def _commit(session: AsyncSession, reason: str) -> None:
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise HTTPException(UNPROCESSABLE, reason) from None


async def _locked_player(session: AsyncSession, player_id: int) -> Player | None:
    return await session.scalar(select(Player).where(Player.id == player_id).with_for_update())


async def _locked_team(session: AsyncSession, team_id: int) -> Team | None:
    return await session.scalar(select(Team).where(Team.id == team_id).with_for_update())


async def _team_exists(session: AsyncSession, team_id: int) -> bool:
    return await session.scalar(select(Team.id).where(Team.id == team_id)) is not None


async def _total(session: AsyncSession, player_id: int) -> int:
    total = select(func.coalesce(func.sum(Score.points), 0)).where(Score.player_id == player_id)
    return await session.scalar(total) or 0


def _score_change(op: Operation, score: Score, player: Player, *, delta: int, total: int) -> Change:
    hints: Hints = {
        "player_id": player.id,
        "region": player.region,
        "team_id": player.team_id,
        "delta": delta,
        "total": total,
    }
    return Change(entity="score", id=str(score.id), op=op, after=hints)


def _score_out(score: Score, change_ids: list[str]) -> ScoreOut:
    return ScoreOut(
        id=score.id,
        player_id=score.player_id,
        points=score.points,
        created_at=as_utc(score.created_at),
        change_ids=change_ids,
    )


def _player_out(player: Player, change_ids: list[str]) -> PlayerOut:
    return PlayerOut(
        id=player.id,
        name=player.name,
        region=player.region,
        team_id=player.team_id,
        created_at=as_utc(player.created_at),
        change_ids=change_ids,
    )


async def _score_for_write(session: AsyncSession, score_id: int) -> tuple[Score, Player]:
    """Lock the score's player, then the score (the order every write path takes), or 404."""
    await _begin_write(session)
    player_id = await session.scalar(select(Score.player_id).where(Score.id == score_id))
    player = await _locked_player(session, player_id) if player_id is not None else None
    score = await session.scalar(select(Score).where(Score.id == score_id).with_for_update())
    if score is None or player is None or score.player_id != player.id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"score {score_id} does not exist")
    return score, player


def api_router() -> APIRouter:
    """The scoreboard's write routes and naive read routes, under ``/api``."""
    router = APIRouter(prefix="/api", tags=["scoreboard"])

    @router.post("/scores", status_code=status.HTTP_201_CREATED)
    async def create_score(body: ScoreIn, session: SessionDep, publisher: PublisherDep) -> ScoreOut:
        await _begin_write(session)
        player = await _locked_player(session, body.player_id)
        if player is None:
            raise HTTPException(UNPROCESSABLE, f"player {body.player_id} does not exist")
        score = Score(player_id=player.id, points=body.points, created_at=utcnow())
        session.add(score)
        await session.flush()
        total = await _total(session, player.id)
        await _commit(session, f"player {body.player_id} does not exist")
        ids = await publisher.publish(_score_change(Operation.CREATE, score, player, delta=score.points, total=total))
        return _score_out(score, ids)

    @router.patch("/scores/{score_id}")
    async def update_score(
        score_id: PathId, body: ScorePatch, session: SessionDep, publisher: PublisherDep
    ) -> ScoreOut:
        score, player = await _score_for_write(session, score_id)
        delta = body.points - score.points
        score.points = body.points
        await session.flush()
        total = await _total(session, player.id)
        await _commit(session, f"score {score_id} could not be updated")
        ids = await publisher.publish(_score_change(Operation.UPDATE, score, player, delta=delta, total=total))
        return _score_out(score, ids)

    @router.delete("/scores/{score_id}")
    async def delete_score(score_id: PathId, session: SessionDep, publisher: PublisherDep) -> ScoreOut:
        score, player = await _score_for_write(session, score_id)
        await session.execute(delete(Score).where(Score.id == score_id))
        total = await _total(session, player.id)
        await _commit(session, f"score {score_id} could not be deleted")
        ids = await publisher.publish(_score_change(Operation.DELETE, score, player, delta=-score.points, total=total))
        return _score_out(score, ids)

    @router.post("/players", status_code=status.HTTP_201_CREATED)
    async def create_player(body: PlayerIn, session: SessionDep, publisher: PublisherDep) -> PlayerOut:
        await _begin_write(session)
        if body.team_id is not None and not await _team_exists(session, body.team_id):
            raise HTTPException(UNPROCESSABLE, f"team {body.team_id} does not exist")
        player = Player(name=body.name, region=body.region, team_id=body.team_id, created_at=utcnow())
        session.add(player)
        await session.flush()
        await _commit(session, f"team {body.team_id} does not exist")
        hints: Hints = {"region": player.region, "team_id": player.team_id, "total": 0}
        ids = await publisher.publish(Change(entity="player", id=str(player.id), op=Operation.CREATE, after=hints))
        return _player_out(player, ids)

    @router.patch("/players/{player_id}")
    async def update_player(
        player_id: PathId, body: PlayerPatch, session: SessionDep, publisher: PublisherDep
    ) -> PlayerOut:
        given = body.model_fields_set
        if not given:
            raise HTTPException(UNPROCESSABLE, "give at least one of name, region, team_id")
        await _begin_write(session)
        player = await _locked_player(session, player_id)
        if player is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"player {player_id} does not exist")
        if body.team_id is not None and not await _team_exists(session, body.team_id):
            raise HTTPException(UNPROCESSABLE, f"team {body.team_id} does not exist")
        old_region, old_team_id = player.region, player.team_id
        if body.name is not None:
            player.name = body.name
        if body.region is not None:
            player.region = body.region
        if "team_id" in given:
            player.team_id = body.team_id
        await session.flush()
        total = await _total(session, player.id)
        await _commit(session, f"team {body.team_id} does not exist")
        hints: Hints = {
            "region": player.region,
            "old_region": old_region,
            "team_id": player.team_id,
            "old_team_id": old_team_id,
            "total": total,
        }
        ids = await publisher.publish(Change(entity="player", id=str(player.id), op=Operation.UPDATE, after=hints))
        return _player_out(player, ids)

    @router.delete("/players/{player_id}")
    async def delete_player(player_id: PathId, session: SessionDep, publisher: PublisherDep) -> PlayerOut:
        await _begin_write(session)
        player = await _locked_player(session, player_id)
        if player is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"player {player_id} does not exist")
        # The total before the delete: everyone ranked below the player in its region moves up.
        total = await _total(session, player.id)
        await session.execute(delete(Player).where(Player.id == player_id))  # its scores go with it (FK cascade)
        await _commit(session, f"player {player_id} could not be deleted")
        hints: Hints = {"region": player.region, "team_id": player.team_id, "total": total}
        ids = await publisher.publish(Change(entity="player", id=str(player.id), op=Operation.DELETE, after=hints))
        return _player_out(player, ids)

    @router.post("/teams", status_code=status.HTTP_201_CREATED)
    async def create_team(body: TeamIn, session: SessionDep, publisher: PublisherDep) -> TeamOut:
        team = Team(name=body.name)
        session.add(team)
        await session.flush()
        await _commit(session, "team could not be created")
        ids = await publisher.publish(Change(entity="team", id=str(team.id), op=Operation.CREATE))
        return TeamOut(id=team.id, name=team.name, change_ids=ids)

    @router.patch("/teams/{team_id}")
    async def update_team(team_id: PathId, body: TeamIn, session: SessionDep, publisher: PublisherDep) -> TeamOut:
        await _begin_write(session)
        team = await _locked_team(session, team_id)
        if team is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"team {team_id} does not exist")
        team.name = body.name
        await _commit(session, f"team {team_id} could not be updated")
        ids = await publisher.publish(Change(entity="team", id=str(team.id), op=Operation.UPDATE))
        return TeamOut(id=team.id, name=team.name, change_ids=ids)

    @router.delete("/teams/{team_id}")
    async def delete_team(team_id: PathId, session: SessionDep, publisher: PublisherDep) -> TeamOut:
        await _begin_write(session)
        team = await _locked_team(session, team_id)
        if team is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"team {team_id} does not exist")
        members = list((await session.scalars(select(Player.id).where(Player.team_id == team_id))).all())
        await session.execute(delete(Team).where(Team.id == team_id))  # members become teamless (FK SET NULL)
        await _commit(session, f"team {team_id} could not be deleted")
        hints: Hints = {}
        if len(members) <= MAX_MEMBER_HINT:
            member_ids: list[HintValue] = list(members)
            hints["player_ids"] = member_ids
        else:
            logger.warning("team %d had %d members; their player views wait for the sweep", team_id, len(members))
        ids = await publisher.publish(Change(entity="team", id=str(team.id), op=Operation.DELETE, after=hints))
        return TeamOut(id=team.id, name=team.name, change_ids=ids)

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
