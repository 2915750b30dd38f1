"""How totals and ranks are counted, in SQL, by the views and by the change -> keys mapping alike."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, func, select

from freshviews.scoreboard.models import Player, Score

#: A player page shows the player's rank in the region only within its top RANKED (read at call time, as
#: ``ranking.RANKED``, so that tests can shrink it).
RANKED = 100


def total_points() -> ColumnElement[int]:
    """A player's total: the sum of their scores, 0 without any."""
    return func.coalesce(func.sum(Score.points), 0)


def totals_by_player() -> Any:  # a Select, whose type parameters differ between SQLAlchemy 2.0 and 2.1
    # Outer join: a player without scores has a total of 0 and still counts for ranks.
    return (
        select(Player.id, Player.name, Player.region, total_points().label("total"), func.count(Score.id))
        .outerjoin(Score, Score.player_id == Player.id)
        .group_by(Player.id, Player.name, Player.region)
    )
