"""The scoreboard's write routes: plain ORM writes, with nothing about the cache in them.

Each route changes rows through the session and commits; the capture the app's lifespan installed
(:func:`freshviews.outbox.capturing`) records every change in the same transaction and the relay sends it on
after the commit. A score write also moves its player's ``total`` and ``score_count`` in that transaction, so
the player row's change says how the player's total moved (what rank shifts are computed from).
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from freshviews.scoreboard.bodies import (
    PathId,
    PlayerIn,
    PlayerOut,
    PlayerPatch,
    ScoreIn,
    ScoreOut,
    ScorePatch,
    TeamIn,
    TeamOut,
)
from freshviews.scoreboard.db import SessionDep
from freshviews.scoreboard.models import Player, Score, Team, as_utc, utcnow

# Spelled out: Starlette renamed its constant for 422 between the versions we support.
UNPROCESSABLE = 422


async def _begin_write(session: AsyncSession) -> None:
    # SQLite's driver starts its transaction at the first INSERT/UPDATE, so what we read before that could change
    # underneath us; IMMEDIATE takes the write lock first, which keeps a player's total exact under concurrent
    # score writes. PostgreSQL gets the same from the row locks (FOR UPDATE) below.
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


async def _score_for_write(session: AsyncSession, score_id: int) -> tuple[Score, Player]:
    """Lock the score's player, then the score (the order every write path takes), or 404."""
    await _begin_write(session)
    player_id = await session.scalar(select(Score.player_id).where(Score.id == score_id))
    player = await _locked_player(session, player_id) if player_id is not None else None
    score = await session.scalar(select(Score).where(Score.id == score_id).with_for_update())
    if score is None or player is None or score.player_id != player.id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"score {score_id} does not exist")
    return score, player


def _score_out(score: Score) -> ScoreOut:
    return ScoreOut(id=score.id, player_id=score.player_id, points=score.points, created_at=as_utc(score.created_at))


def _player_out(player: Player) -> PlayerOut:
    return PlayerOut(
        id=player.id,
        name=player.name,
        region=player.region,
        team_id=player.team_id,
        created_at=as_utc(player.created_at),
        total=player.total,
    )


def write_router() -> APIRouter:
    """The write routes, under ``/api``."""
    router = APIRouter(prefix="/api", tags=["writes"])

    @router.post("/scores", status_code=status.HTTP_201_CREATED)
    async def create_score(body: ScoreIn, session: SessionDep) -> ScoreOut:
        await _begin_write(session)
        player = await _locked_player(session, body.player_id)
        if player is None:
            raise HTTPException(UNPROCESSABLE, f"player {body.player_id} does not exist")
        score = Score(player_id=player.id, points=body.points, created_at=utcnow())
        session.add(score)
        player.total += body.points
        player.score_count += 1
        await _commit(session, f"player {body.player_id} does not exist")
        return _score_out(score)

    @router.patch("/scores/{score_id}")
    async def update_score(score_id: PathId, body: ScorePatch, session: SessionDep) -> ScoreOut:
        score, player = await _score_for_write(session, score_id)
        player.total += body.points - score.points
        score.points = body.points
        await _commit(session, f"score {score_id} could not be updated")
        return _score_out(score)

    @router.delete("/scores/{score_id}")
    async def delete_score(score_id: PathId, session: SessionDep) -> ScoreOut:
        score, player = await _score_for_write(session, score_id)
        player.total -= score.points
        player.score_count -= 1
        await session.delete(score)
        await _commit(session, f"score {score_id} could not be deleted")
        return _score_out(score)

    @router.post("/players", status_code=status.HTTP_201_CREATED)
    async def create_player(body: PlayerIn, session: SessionDep) -> PlayerOut:
        await _begin_write(session)
        if body.team_id is not None and not await _team_exists(session, body.team_id):
            raise HTTPException(UNPROCESSABLE, f"team {body.team_id} does not exist")
        player = Player(
            name=body.name, region=body.region, team_id=body.team_id, created_at=utcnow(), total=0, score_count=0
        )
        session.add(player)
        await _commit(session, f"team {body.team_id} does not exist")
        return _player_out(player)

    @router.patch("/players/{player_id}")
    async def update_player(player_id: PathId, body: PlayerPatch, session: SessionDep) -> PlayerOut:
        given = body.model_fields_set
        if not given:
            raise HTTPException(UNPROCESSABLE, "give at least one of name, region, team_id")
        await _begin_write(session)
        player = await _locked_player(session, player_id)
        if player is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"player {player_id} does not exist")
        if body.team_id is not None and not await _team_exists(session, body.team_id):
            raise HTTPException(UNPROCESSABLE, f"team {body.team_id} does not exist")
        if body.name is not None:
            player.name = body.name
        if body.region is not None:
            player.region = body.region
        if "team_id" in given:
            player.team_id = body.team_id
        await _commit(session, f"team {body.team_id} does not exist")
        return _player_out(player)

    @router.delete("/players/{player_id}")
    async def delete_player(player_id: PathId, session: SessionDep) -> PlayerOut:
        await _begin_write(session)
        player = await _locked_player(session, player_id)
        if player is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"player {player_id} does not exist")
        await session.delete(player)  # its scores go with it (the foreign key's ON DELETE CASCADE)
        await _commit(session, f"player {player_id} could not be deleted")
        return _player_out(player)

    @router.post("/teams", status_code=status.HTTP_201_CREATED)
    async def create_team(body: TeamIn, session: SessionDep) -> TeamOut:
        team = Team(name=body.name)
        session.add(team)
        await _commit(session, "team could not be created")
        return TeamOut(id=team.id, name=team.name)

    @router.patch("/teams/{team_id}")
    async def update_team(team_id: PathId, body: TeamIn, session: SessionDep) -> TeamOut:
        await _begin_write(session)
        team = await _locked_team(session, team_id)
        if team is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"team {team_id} does not exist")
        team.name = body.name
        await _commit(session, f"team {team_id} could not be updated")
        return TeamOut(id=team.id, name=team.name)

    @router.delete("/teams/{team_id}")
    async def delete_team(team_id: PathId, session: SessionDep) -> TeamOut:
        await _begin_write(session)
        team = await _locked_team(session, team_id)
        if team is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"team {team_id} does not exist")
        # Through the session: the ORM sets each member's team_id to NULL, and each of those is a captured change.
        await session.delete(team)
        await _commit(session, f"team {team_id} could not be deleted")
        return TeamOut(id=team.id, name=team.name)

    return router
