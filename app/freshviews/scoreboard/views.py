"""The scoreboard's cached views: what each computes, what it depends on, and the registry of them all.

The same compute functions serve the naive ``/api`` read routes and the subscriber, so the cached bytes are
exactly what the backend would have answered. Importing this module touches no database: the subscriber opens
one through ``registry.open_context()`` (:func:`freshviews.scoreboard.db.database_from_env`).

Which keys a change affects is declared with each view (``depends_on``): a player row names its own page, its
region's leaderboard and its team's page (before and after the change, so a move refreshes both sides); a score
row names its player's page. Two effects across rows need code, in :mod:`freshviews.scoreboard.effects`: a
changed total moves the shown rank of other players of the region, and a renamed team is shown on its members'
pages.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select

from freshviews.core import MISSING, Choice, Int, Missing, On, Params, Registry, View
from freshviews.scoreboard import ranking
from freshviews.scoreboard.db import Database, database_from_env
from freshviews.scoreboard.effects import player_pages
from freshviews.scoreboard.models import REGIONS, Player, Score, Team, as_utc

LEADERBOARD_SIZE = 50
TOP_SIZE = 10
RECENT_SIZE = 10


class Ranked(BaseModel):
    rank: int
    id: int
    name: str
    region: str
    total: int
    scores: int


class RegionTotals(BaseModel):
    region: str
    players: int
    points: int


class GlobalStats(BaseModel):
    players: int
    scores: int
    points: int
    regions: list[RegionTotals]
    top: list[Ranked]


class Leaderboard(BaseModel):
    region: str
    players: int
    entries: list[Ranked]


class ScoreLine(BaseModel):
    id: int
    points: int
    created_at: datetime


class PlayerDetail(BaseModel):
    id: int
    name: str
    region: str
    team_id: int | None
    team_name: str | None
    created_at: datetime
    total: int
    scores: int
    #: Rank in the region when within its top RANKED, else None.
    rank: int | None
    recent: list[ScoreLine]


class TeamMember(BaseModel):
    id: int
    name: str
    region: str
    total: int
    scores: int


class TeamDetail(BaseModel):
    id: int
    name: str
    total: int
    members: list[TeamMember]


_RANKED_COLUMNS = (Player.id, Player.name, Player.region, Player.total, Player.score_count)


def _ranked(rows: Sequence[Sequence[Any]]) -> list[Ranked]:
    """Rows ordered by total descending (and id), ranked so ties share a rank, as the player view counts them."""
    ranks = ranking.competition_ranks([row[3] for row in rows])
    return [
        Ranked(rank=rank, id=i, name=name, region=region, total=total, scores=scores)
        for rank, (i, name, region, total, scores) in zip(ranks, rows, strict=True)
    ]


async def compute_stats_global(db: Database) -> GlobalStats:
    """Counts and sums over everything, per region, and the global top 10: the heaviest view."""
    async with db.sessionmaker() as session:
        players, scores, points = (
            await session.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(Player.score_count), 0),
                    func.coalesce(func.sum(Player.total), 0),
                )
            )
        ).one()
        per_region: dict[str, tuple[int, int]] = {region: (0, 0) for region in REGIONS}
        grouped = select(Player.region, func.count(), func.coalesce(func.sum(Player.total), 0)).group_by(Player.region)
        for region, count, total in await session.execute(grouped):
            per_region[region] = (count, total)
        top = (
            await session.execute(select(*_RANKED_COLUMNS).order_by(Player.total.desc(), Player.id).limit(TOP_SIZE))
        ).all()
    return GlobalStats(
        players=players,
        scores=scores,
        points=points,
        regions=[RegionTotals(region=r, players=n, points=p) for r, (n, p) in per_region.items()],
        top=_ranked(top),
    )


async def compute_leaderboard(db: Database, *, region: str) -> Leaderboard:
    """The region's top 50 players by total points, with their score counts."""
    async with db.sessionmaker() as session:
        players = await session.scalar(select(func.count()).select_from(Player).where(Player.region == region))
        rows = (
            await session.execute(
                select(*_RANKED_COLUMNS)
                .where(Player.region == region)
                .order_by(Player.total.desc(), Player.id)
                .limit(LEADERBOARD_SIZE)
            )
        ).all()
    return Leaderboard(region=region, players=players or 0, entries=_ranked(rows))


async def compute_player(db: Database, *, player_id: int) -> PlayerDetail | Missing:
    """One player: team, total, latest scores and rank in the region; MISSING once the player is deleted."""
    async with db.sessionmaker() as session:
        found = (
            await session.execute(
                select(Player, Team.name).outerjoin(Team, Team.id == Player.team_id).where(Player.id == player_id)
            )
        ).first()
        if found is None:
            return MISSING
        player, team_name = found
        recent = (
            await session.execute(
                select(Score.id, Score.points, Score.created_at)
                .where(Score.player_id == player_id)
                .order_by(Score.created_at.desc(), Score.id.desc())
                .limit(RECENT_SIZE)
            )
        ).all()
        higher = await session.scalar(
            select(func.count()).select_from(Player).where(Player.region == player.region, Player.total > player.total)
        )
    return PlayerDetail(
        id=player.id,
        name=player.name,
        region=player.region,
        team_id=player.team_id,
        team_name=team_name,
        created_at=as_utc(player.created_at),
        total=player.total,
        scores=player.score_count,
        rank=ranking.shown(higher or 0),
        recent=[ScoreLine(id=i, points=p, created_at=as_utc(at)) for i, p, at in recent],
    )


async def compute_team(db: Database, *, team_id: int) -> TeamDetail | Missing:
    """A team with each member's total and the team's; MISSING once the team is deleted."""
    async with db.sessionmaker() as session:
        name = await session.scalar(select(Team.name).where(Team.id == team_id))
        if name is None:
            return MISSING
        rows = (
            await session.execute(
                select(*_RANKED_COLUMNS).where(Player.team_id == team_id).order_by(Player.total.desc(), Player.id)
            )
        ).all()
    members = [TeamMember(id=i, name=n, region=r, total=t, scores=c) for i, n, r, t, c in rows]
    return TeamDetail(id=team_id, name=name, total=sum(m.total for m in members), members=members)


async def _all_players(db: Database) -> list[Params]:
    async with db.sessionmaker() as session:
        return [{"player_id": i} for i in (await session.scalars(select(Player.id).order_by(Player.id))).all()]


async def _all_teams(db: Database) -> list[Params]:
    async with db.sessionmaker() as session:
        return [{"team_id": i} for i in (await session.scalars(select(Team.id).order_by(Team.id))).all()]


async def _one_global(_db: Database) -> list[Params]:
    return [{}]


async def _every_region(_db: Database) -> list[Params]:
    return [{"region": r} for r in REGIONS]


registry: Registry[Database] = Registry(
    [
        View(
            "stats/global",
            compute=compute_stats_global,
            enumerate=_one_global,
            # Every score write also moves its player's total and count, so the player rows are enough.
            depends_on=[On("players")],
            example={},
        ),
        View(
            "leaderboard/{region}",
            compute=compute_leaderboard,
            enumerate=_every_region,
            depends_on=[On("players", region="region")],
            params={"region": Choice(REGIONS)},
            example={"region": "eu"},
        ),
        View(
            "player/{player_id}",
            compute=compute_player,
            enumerate=_all_players,
            depends_on=[
                On("players", player_id="id", columns=("region", "total")),
                On("scores", player_id="player_id"),
                On("teams"),
            ],
            affected=player_pages,
            params={"player_id": Int(minimum=1)},
            example={"player_id": 1},
        ),
        View(
            "team/{team_id}",
            compute=compute_team,
            enumerate=_all_teams,
            depends_on=[On("teams", team_id="id"), On("players", team_id="team_id")],
            params={"team_id": Int(minimum=1)},
            example={"team_id": 1},
        ),
    ],
    context=database_from_env,
)
