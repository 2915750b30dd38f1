"""Effects across rows that declarations cannot express, computed for a whole batch of changes at once.

The player page shows the player's rank in its region (within the top ``RANKED``) and its team's name, so:

- **Rank shifts.** A player whose total goes from ``a`` to ``b`` in a region moves the rank of every player there
  with a total in ``[min(a, b), max(a, b))``; a player arriving in a region with total ``t``, or leaving it,
  moves everyone there below ``t``. Each change carries the player's region and total before and after (the write
  routes keep ``players.total`` in the same transaction as each score), so every crossing of the batch is
  exact, however many writes the batch holds and in whatever order they came.
  A crossed page's *shown* rank changes only if the rank was or is within ``RANKED``. If the batch moved ``n``
  players of a region, no other player's rank there moved by more than ``n`` during the batch, so a page whose
  rank is now beyond ``RANKED + n`` showed no rank before the batch either: the cut is the ``(RANKED + n)``-th
  highest total now. That is exact when the batch holds every change committed before it is processed (a caught
  up subscriber, or a drained backlog, which the subscriber reads as one batch); a page pushed past the cut by
  writes that commit while the batch is processed and land in a later batch is left to the sweep.
- **Team names.** A renamed team's members show the new name.

Two queries per region the batch touches (the cut, then the crossed players), one for the renamed teams: never one
query per change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from sqlalchemy import and_, or_, select

from freshviews.core import Change, Operation, Params
from freshviews.scoreboard import ranking
from freshviews.scoreboard.db import Database
from freshviews.scoreboard.models import REGIONS, Player

#: Beyond this many separate windows in one region, one window spanning them all is asked for instead.
MAX_WINDOWS = 32

Window = tuple[float, float]


def _side(row: Mapping[str, object] | None) -> tuple[str, float] | bool | None:
    """(region, total) of one side of a player change; None for no row (insert, delete); False when unknown."""
    if row is None:
        return None
    region, total = row.get("region"), row.get("total")
    if not isinstance(region, str) or isinstance(total, bool) or not isinstance(total, int | float):
        return False
    return region, float(total)


def crossings(changes: Sequence[Change]) -> tuple[dict[str, list[Window]], dict[str, set[str]]]:
    """The total windows each region's players were crossed in, and the players of each region that moved."""
    windows: dict[str, list[Window]] = {}
    moved: dict[str, set[str]] = {}
    for change in changes:
        if change.entity != "players":
            continue
        before, after = _side(change.before), _side(change.after)
        if before is False or after is False:
            # A change that does not say where the player was: every rank of every region may have moved.
            for every in REGIONS:
                windows.setdefault(every, []).append((-math.inf, math.inf))
                moved.setdefault(every, set()).add(change.id)
            continue
        sides = [side for side in (before, after) if isinstance(side, tuple)]
        for region, _ in sides:
            moved.setdefault(region, set()).add(change.id)
        if isinstance(before, tuple) and isinstance(after, tuple) and before[0] == after[0]:
            if before[1] != after[1]:
                windows.setdefault(before[0], []).append((min(before[1], after[1]), max(before[1], after[1])))
            continue
        for region, total in sides:  # arriving in or leaving a region
            windows.setdefault(region, []).append((-math.inf, total))
    return windows, moved


def merged(windows: list[Window]) -> list[Window]:
    """Overlapping and touching windows joined; more than MAX_WINDOWS become their hull."""
    out: list[Window] = []
    for low, high in sorted(windows):
        if out and low <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], high))
        else:
            out.append((low, high))
    return [(out[0][0], out[-1][1])] if len(out) > MAX_WINDOWS else out


async def rank_shifts(db: Database, changes: Sequence[Change]) -> set[int]:
    """Players whose shown rank the batch's player changes may have moved (the movers themselves included)."""
    windows, moved = crossings(changes)
    found: set[int] = set()
    async with db.sessionmaker() as session:
        for region, region_windows in sorted(windows.items()):
            cut = await session.scalar(
                select(Player.total)
                .where(Player.region == region)
                .order_by(Player.total.desc())
                .offset(ranking.RANKED + len(moved.get(region, ())) - 1)
                .limit(1)
            )
            bounds = []
            for low, high in merged(region_windows):
                side = []
                if low != -math.inf:
                    side.append(Player.total >= low)
                if high != math.inf:
                    side.append(Player.total < high)
                bounds.append(and_(*side) if side else Player.id.is_not(None))
            query = select(Player.id).where(Player.region == region, or_(*bounds))
            if cut is not None:
                query = query.where(Player.total >= cut)
            found.update((await session.scalars(query)).all())
    return found


async def team_members(db: Database, changes: Sequence[Change]) -> set[int]:
    """Members of the teams the batch renamed (their pages show the team's name)."""
    renamed = {int(c.id) for c in changes if c.entity == "teams" and c.op is Operation.UPDATE and c.id.isdigit()}
    if not renamed:
        return set()
    async with db.sessionmaker() as session:
        return set((await session.scalars(select(Player.id).where(Player.team_id.in_(sorted(renamed))))).all())


async def player_pages(db: Database, changes: Sequence[Change]) -> list[Params]:
    """The ``affected`` function of ``player/{player_id}``: rank shifts and renamed teams' members."""
    players = await rank_shifts(db, changes) | await team_members(db, changes)
    return [{"player_id": player_id} for player_id in sorted(players)]
