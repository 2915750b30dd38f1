"""How ranks are counted, by the views and by the rank shifts alike.

Ranks are competition ranks within a region: 1 + the number of players there with a strictly higher total, so
players with equal totals share a rank. A player page shows its rank only within the region's top ``RANKED``
(null below, as game scoreboards do), which keeps the pages a score moves to the few whose shown rank changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Read at call time, as ``ranking.RANKED``, so that tests can shrink it.
RANKED = 100


def competition_ranks(totals: Sequence[Any]) -> list[int]:
    """The rank of each of ``totals``, which are in descending order: ties share the rank of the first of them."""
    ranks: list[int] = []
    for index, total in enumerate(totals):
        ranks.append(ranks[-1] if ranks and totals[index - 1] == total else index + 1)
    return ranks


def shown(higher: int) -> int | None:
    """The rank a player page shows for a player with ``higher`` players above it in its region."""
    return higher + 1 if higher < RANKED else None
