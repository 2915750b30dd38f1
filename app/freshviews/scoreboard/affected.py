"""Which cached keys a change touches: the ``affected`` function of each scoreboard view.

Hints come first (the write path knows a score's player, region and total, a player's old region and team);
a missing hint costs a lookup, or a wider answer that is still correct: never a narrower one, since a key
left out stays stale until the next sweep. A player page shows its rank only within the region's top
``ranking.RANKED``, so a score touches the pages whose shown rank moved, not every rank below.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import and_, select

from freshviews.core.events import Change, Operation
from freshviews.core.views import Params
from freshviews.scoreboard import ranking
from freshviews.scoreboard.db import Database
from freshviews.scoreboard.models import REGIONS, Player, Score, Team
from freshviews.scoreboard.ranking import total_points


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
        total = await session.scalar(select(total_points()).where(Score.player_id == player_id)) or 0
    return found[0], found[1], total


async def _players_between(
    db: Database, region: str, *, at_least: int | None, below: int | None, exclude: int
) -> list[int]:
    """Ids of the players in ``region`` whose total is in [at_least, below) (None: unbounded)."""
    bounds = []
    if at_least is not None:
        bounds.append(total_points() >= at_least)
    if below is not None:
        bounds.append(total_points() < below)
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
        select(total_points())
        .select_from(Player)
        .outerjoin(Score, Score.player_id == Player.id)
        .where(Player.region == region)
        .group_by(Player.id)
        .order_by(total_points().desc())
        .offset(ranking.RANKED)
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


def affected_global(_db: Database, _change: Change) -> list[Params]:
    return [{}]


async def affected_leaderboard(db: Database, change: Change) -> list[Params]:
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


async def affected_player(db: Database, change: Change) -> list[Params]:
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


async def affected_team(db: Database, change: Change) -> list[Params]:
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
