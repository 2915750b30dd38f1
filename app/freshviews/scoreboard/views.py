"""The scoreboard's cached views: what each computes, how to list every key, and the registry of them all.

The same compute functions serve the naive ``/api`` read routes and the subscriber, so the cached bytes are
exactly what the backend would have answered. Importing this module touches no database: the subscriber opens
one through ``registry.open_context()`` (:func:`app.db.database_from_env`).

Ranks are competition ranks within a region: 1 + the number of players there with a strictly higher total.
A change to one player's total moves the rank of every player whose total lies between the old and the new
one: with 5000 players that is ~50 player pages per ordinary score, which on the seeded SQLite database kept
the subscriber a minute behind at 5 writes/s. So a player page shows its rank only within the region's top
``RANKED`` (null below, as game scoreboards do; :mod:`app.ranking`), and ``affected`` (:mod:`app.affected`)
returns exactly the pages whose shown rank moved: the player itself, plus the window of moved ranks cut at the
top ``RANKED`` + 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select

from freshviews.core.views import MISSING, Choice, Int, Missing, Params, Registry, View
from freshviews.scoreboard import ranking
from freshviews.scoreboard.affected import affected_global, affected_leaderboard, affected_player, affected_team
from freshviews.scoreboard.db import Database, database_from_env
from freshviews.scoreboard.models import REGIONS, Player, Score, Team, as_utc
from freshviews.scoreboard.ranking import total_points, totals_by_player

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


def _ranked(rows: Sequence[Sequence[Any]]) -> list[Ranked]:
    """Rows ordered by total descending (and id), ranked so ties share a rank, as the player view counts them."""
    out: list[Ranked] = []
    for index, (player_id, name, region, total, scores) in enumerate(rows):
        rank = out[-1].rank if out and out[-1].total == total else index + 1
        out.append(Ranked(rank=rank, id=player_id, name=name, region=region, total=total, scores=scores))
    return out


async def compute_stats_global(db: Database) -> GlobalStats:
    """Counts and sums over everything, per region, and the global top 10: the heaviest view."""
    async with db.sessionmaker() as session:
        players = await session.scalar(select(func.count()).select_from(Player)) or 0
        scores, points = (await session.execute(select(func.count(Score.id), total_points()))).one()
        per_region: dict[str, int] = dict.fromkeys(REGIONS, 0)
        for region, count in await session.execute(select(Player.region, func.count()).group_by(Player.region)):
            per_region[region] = count
        by_region = (
            select(Player.region, total_points()).join(Score, Score.player_id == Player.id).group_by(Player.region)
        )
        points_by_region: dict[str, int] = {region: total for region, total in await session.execute(by_region)}
        top = (
            await session.execute(totals_by_player().order_by(total_points().desc(), Player.id).limit(TOP_SIZE))
        ).all()
    return GlobalStats(
        players=players,
        scores=scores,
        points=points,
        regions=[RegionTotals(region=r, players=n, points=points_by_region.get(r, 0)) for r, n in per_region.items()],
        top=_ranked(top),
    )


async def compute_leaderboard(db: Database, *, region: str) -> Leaderboard:
    """The region's top 50 players by total points, with their score counts."""
    async with db.sessionmaker() as session:
        players = await session.scalar(select(func.count()).select_from(Player).where(Player.region == region))
        rows = (
            await session.execute(
                totals_by_player()
                .where(Player.region == region)
                .order_by(total_points().desc(), Player.id)
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
        total, count = (
            await session.execute(select(total_points(), func.count(Score.id)).where(Score.player_id == player_id))
        ).one()
        recent = (
            await session.execute(
                select(Score.id, Score.points, Score.created_at)
                .where(Score.player_id == player_id)
                .order_by(Score.created_at.desc(), Score.id.desc())
                .limit(RECENT_SIZE)
            )
        ).all()
        # A correlated sum per player of the region beats GROUP BY here: no temporary b-tree to group in.
        player_total = select(total_points()).where(Score.player_id == Player.id).correlate(Player).scalar_subquery()
        higher = await session.scalar(
            select(func.count()).select_from(Player).where(Player.region == player.region, player_total > total)
        )
    return PlayerDetail(
        id=player.id,
        name=player.name,
        region=player.region,
        team_id=player.team_id,
        team_name=team_name,
        created_at=as_utc(player.created_at),
        total=total,
        scores=count,
        rank=(higher or 0) + 1 if (higher or 0) < ranking.RANKED else None,
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
                totals_by_player().where(Player.team_id == team_id).order_by(total_points().desc(), Player.id)
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
            affected=affected_global,
            enumerate=_one_global,
            entities=frozenset({"score", "player"}),
            example={},
        ),
        View(
            "leaderboard/{region}",
            compute=compute_leaderboard,
            affected=affected_leaderboard,
            enumerate=_every_region,
            entities=frozenset({"score", "player"}),
            params={"region": Choice(REGIONS)},
            example={"region": "eu"},
        ),
        View(
            "player/{player_id}",
            compute=compute_player,
            affected=affected_player,
            enumerate=_all_players,
            entities=frozenset({"score", "player", "team"}),
            params={"player_id": Int(minimum=1)},
            example={"player_id": 1},
        ),
        View(
            "team/{team_id}",
            compute=compute_team,
            affected=affected_team,
            enumerate=_all_teams,
            entities=frozenset({"team", "player", "score"}),
            params={"team_id": Int(minimum=1)},
            example={"team_id": 1},
        ),
    ],
    context=database_from_env,
)
