"""The scoreboard's cached views: what each computes, which keys a change touches, and the registry of them all.

The same compute functions serve the naive ``/api`` read routes and the subscriber, so the cached bytes are
exactly what the backend would have answered. Importing this module touches no database: the subscriber opens
one through ``registry.open_context()`` (:func:`app.db.database_from_env`).

Ranks are competition ranks within a region: 1 + the number of players there with a strictly higher total.
A change to one player's total moves the rank of every player whose total lies between the old and the new
one: with 5000 players that is ~50 player pages per ordinary score, which on the seeded SQLite database kept
the subscriber a minute behind at 5 writes/s. So a player page shows its rank only within the region's top
``RANKED`` (null below, as game scoreboards do), and ``affected`` returns exactly the pages whose shown rank
moved: the player itself, plus the window of moved ranks cut at the top ``RANKED`` + 1.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import ColumnElement, and_, func, select

from app.db import Database, database_from_env
from app.models import REGIONS, Player, Score, Team, as_utc
from publisher.events import Change, Operation
from subscriber.registry import MISSING, Choice, Int, Missing, Params, Registry, View

LEADERBOARD_SIZE = 50
TOP_SIZE = 10
RECENT_SIZE = 10
#: A player page shows the player's rank in the region only within its top RANKED.
RANKED = 100


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


def _total() -> ColumnElement[int]:
    return func.coalesce(func.sum(Score.points), 0)


def _ranked(rows: Sequence[Sequence[Any]]) -> list[Ranked]:
    """Rows ordered by total descending (and id), ranked so ties share a rank, as the player view counts them."""
    out: list[Ranked] = []
    for index, (player_id, name, region, total, scores) in enumerate(rows):
        rank = out[-1].rank if out and out[-1].total == total else index + 1
        out.append(Ranked(rank=rank, id=player_id, name=name, region=region, total=total, scores=scores))
    return out


def _totals_by_player() -> Any:  # a Select, whose type parameters differ between SQLAlchemy 2.0 and 2.1
    # Outer join: a player without scores has a total of 0 and still counts for ranks.
    return (
        select(Player.id, Player.name, Player.region, _total().label("total"), func.count(Score.id))
        .outerjoin(Score, Score.player_id == Player.id)
        .group_by(Player.id, Player.name, Player.region)
    )


async def compute_stats_global(db: Database) -> GlobalStats:
    """Counts and sums over everything, per region, and the global top 10: the heaviest view."""
    async with db.sessionmaker() as session:
        players = await session.scalar(select(func.count()).select_from(Player)) or 0
        scores, points = (await session.execute(select(func.count(Score.id), _total()))).one()
        per_region: dict[str, int] = dict.fromkeys(REGIONS, 0)
        for region, count in await session.execute(select(Player.region, func.count()).group_by(Player.region)):
            per_region[region] = count
        by_region = select(Player.region, _total()).join(Score, Score.player_id == Player.id).group_by(Player.region)
        points_by_region: dict[str, int] = {region: total for region, total in await session.execute(by_region)}
        top = (await session.execute(_totals_by_player().order_by(_total().desc(), Player.id).limit(TOP_SIZE))).all()
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
                _totals_by_player()
                .where(Player.region == region)
                .order_by(_total().desc(), Player.id)
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
            await session.execute(select(_total(), func.count(Score.id)).where(Score.player_id == player_id))
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
        player_total = select(_total()).where(Score.player_id == Player.id).correlate(Player).scalar_subquery()
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
        rank=(higher or 0) + 1 if (higher or 0) < RANKED else None,
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
                _totals_by_player().where(Player.team_id == team_id).order_by(_total().desc(), Player.id)
            )
        ).all()
    members = [TeamMember(id=i, name=n, region=r, total=t, scores=c) for i, n, r, t, c in rows]
    return TeamDetail(id=team_id, name=name, total=sum(m.total for m in members), members=members)


# --- affected: change -> keys. Hints come first; a missing hint costs a lookup or a wider (still correct) answer.


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit() and len(value) < 17:
        return int(value)
    return None


def _region(change: Change, name: str) -> str | None:
    value = change.hints.get(name)
    return value if isinstance(value, str) and value in REGIONS else None


async def _score_player_id(db: Database, change: Change) -> int | None:
    player_id = _int(change.hints.get("player_id"))
    score_id = _int(change.id)
    if player_id is not None or score_id is None:
        return player_id
    async with db.sessionmaker() as session:
        return await session.scalar(select(Score.player_id).where(Score.id == score_id))


async def _player_facts(db: Database, player_id: int) -> tuple[str, int | None, int] | None:
    """(region, team_id, total) of a player, or None when it does not exist."""
    async with db.sessionmaker() as session:
        found = (await session.execute(select(Player.region, Player.team_id).where(Player.id == player_id))).first()
        if found is None:
            return None
        total = await session.scalar(select(_total()).where(Score.player_id == player_id)) or 0
    return found[0], found[1], total


async def _players_between(
    db: Database, region: str, *, at_least: int | None, below: int | None, exclude: int
) -> list[int]:
    """Ids of the players in ``region`` whose total is in [at_least, below) (None: unbounded)."""
    bounds = []
    if at_least is not None:
        bounds.append(_total() >= at_least)
    if below is not None:
        bounds.append(_total() < below)
    stmt = (
        select(Player.id)
        .outerjoin(Score, Score.player_id == Player.id)
        .where(Player.region == region, Player.id != exclude)
        .group_by(Player.id)
    )
    if bounds:
        stmt = stmt.having(and_(*bounds))
    async with db.sessionmaker() as session:
        return list((await session.scalars(stmt)).all())


async def _rank_floor(db: Database, region: str) -> int | None:
    """The lowest total whose rank can show (the RANKED+1-th highest in the region); None: every rank shows."""
    stmt = (
        select(_total())
        .select_from(Player)
        .outerjoin(Score, Score.player_id == Player.id)
        .where(Player.region == region)
        .group_by(Player.id)
        .order_by(_total().desc())
        .offset(RANKED)
        .limit(1)
    )
    async with db.sessionmaker() as session:
        return await session.scalar(stmt)


async def _shown_ranks_moved(
    db: Database, regions: Collection[str], *, at_least: int | None, below: int | None, exclude: int
) -> list[int]:
    """Players of ``regions`` with a total in [at_least, below) whose rank shows (or just stopped showing).

    A shown rank changed iff the rank moved and the new one is at most RANKED + 1, i.e. the total is at least
    the RANKED+1-th highest. The floor is read now, not at commit: a later change that moved it carries its
    own window.
    """
    out: list[int] = []
    for region in sorted(regions):
        floor = await _rank_floor(db, region)
        low = at_least if floor is None else floor if at_least is None else max(at_least, floor)
        if low is not None and below is not None and low >= below:
            continue
        out.extend(await _players_between(db, region, at_least=low, below=below, exclude=exclude))
    return out


def _affected_global(_db: Database, _change: Change) -> list[Params]:
    return [{}]


async def _affected_leaderboard(db: Database, change: Change) -> list[Params]:
    if change.entity == "score":
        region = _region(change, "region")
        if region is None:
            player_id = await _score_player_id(db, change)
            facts = await _player_facts(db, player_id) if player_id is not None else None
            region = facts[0] if facts is not None else None
        # A score of a player that is gone by now: its region is unknown, so refresh all eight.
        return [{"region": r} for r in ([region] if region is not None else REGIONS)]
    names = ("region", "old_region") if change.op is Operation.UPDATE else ("region",)
    regions = {_region(change, name) for name in names}
    if None in regions:
        # Where the player was before the change is unknowable now: refresh all eight.
        return [{"region": r} for r in REGIONS]
    return [{"region": r} for r in sorted(r for r in regions if r is not None)]


async def _affected_player(db: Database, change: Change) -> list[Params]:
    """The player itself, plus every player of the region whose rank the change moved."""
    if change.entity == "team":
        team_id = _int(change.id)
        # A deleted team's members no longer point at it; the delete change names them.
        ids = {i for i in (_int(v) for v in _as_list(change.hints.get("player_ids"))) if i is not None}
        if team_id is not None and change.op is not Operation.CREATE:
            async with db.sessionmaker() as session:
                ids.update((await session.scalars(select(Player.id).where(Player.team_id == team_id))).all())
        return [{"player_id": i} for i in sorted(ids)]
    player_id = _int(change.id) if change.entity == "player" else await _score_player_id(db, change)
    if player_id is None:
        return []  # a score deleted without its player_id hint: left to the sweep
    moved = await _rank_shifts(db, change, player_id)
    return [{"player_id": i} for i in sorted({player_id, *moved})]


async def _rank_shifts(db: Database, change: Change, player_id: int) -> list[int]:
    """Players (other than ``player_id``) whose rank the change moved.

    A total going from a to b moves the rank of everyone in the region with a total in [min(a, b), max(a, b));
    a player with total t arriving in or leaving a region moves everyone there with a total below t.
    """
    region, total = _region(change, "region"), _int(change.hints.get("total"))
    if region is None or total is None:
        facts = await _player_facts(db, player_id)
        if facts is not None:
            region = region or facts[0]
            total = total if total is not None else facts[2]
        elif change.entity == "score":
            return []  # the player is gone: its own delete change carries the rank shifts
    regions: set[str] = {region} if region is not None else set(REGIONS)
    if change.entity == "score":
        delta = _int(change.hints.get("delta"))
        if delta is None or total is None:
            return await _shown_ranks_moved(db, regions, at_least=None, below=None, exclude=player_id)
        low, high = sorted((total - delta, total))
        if low == high:
            return []
        return await _shown_ranks_moved(db, regions, at_least=low, below=high, exclude=player_id)
    if change.op is Operation.UPDATE:
        old_region = _region(change, "old_region")
        if region is not None and old_region is not None and "region" in change.hints:
            if old_region == region:
                return []  # a rename or a team change moves no rank
            regions = {region, old_region}
        else:
            regions = set(REGIONS)
    return await _shown_ranks_moved(db, regions, at_least=None, below=total, exclude=player_id)


async def _affected_team(db: Database, change: Change) -> list[Params]:
    if change.entity == "team":
        team_id = _int(change.id)
        return [] if team_id is None else [{"team_id": team_id}]
    moving = change.entity == "player" and change.op is Operation.UPDATE
    names = ("team_id", "old_team_id") if moving else ("team_id",)
    if all(name in change.hints for name in names):
        teams = {_int(change.hints[name]) for name in names}
    else:
        player_id = _int(change.id) if change.entity == "player" else await _score_player_id(db, change)
        facts = await _player_facts(db, player_id) if player_id is not None else None
        teams = {facts[1]} if facts is not None else set()
        if change.entity == "player" and change.op is not Operation.CREATE:
            # The team the player was in before the change is unknowable now: refresh every team.
            async with db.sessionmaker() as session:
                teams.update((await session.scalars(select(Team.id))).all())
    return [{"team_id": t} for t in sorted(t for t in teams if t is not None)]


def _as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


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
            affected=_affected_global,
            enumerate=_one_global,
            entities=frozenset({"score", "player"}),
            example={},
        ),
        View(
            "leaderboard/{region}",
            compute=compute_leaderboard,
            affected=_affected_leaderboard,
            enumerate=_every_region,
            entities=frozenset({"score", "player"}),
            params={"region": Choice(REGIONS)},
            example={"region": "eu"},
        ),
        View(
            "player/{player_id}",
            compute=compute_player,
            affected=_affected_player,
            enumerate=_all_players,
            entities=frozenset({"score", "player", "team"}),
            params={"player_id": Int(minimum=1)},
            example={"player_id": 1},
        ),
        View(
            "team/{team_id}",
            compute=compute_team,
            affected=_affected_team,
            enumerate=_all_teams,
            entities=frozenset({"team", "player", "score"}),
            params={"team_id": Int(minimum=1)},
            example={"team_id": 1},
        ),
    ],
    context=database_from_env,
)
