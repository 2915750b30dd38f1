"""What the scoreboard's routes accept and answer, and the one rule every route parses ids by.

An id is parsed as the cache keys parse theirs (:class:`freshviews.core.Int`, canonical spelling only): on every
route ``7`` is player 7, and ``07``, ``+7``, ``7.0``, ``1_0``, ``true`` or ``" 7"`` are refused with 422, so one
id can never mean two rows on two routes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Path
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StringConstraints

from freshviews.core import Int
from freshviews.scoreboard.models import Region

#: The rule of every row id, in paths and bodies alike: the one the cache keys use.
ROW_ID = Int(minimum=1)


def canonical_id(value: Any) -> int:
    """``value`` as a row id: an int in a body, canonical digits in a path; ValueError with the reason otherwise."""
    if isinstance(value, str):
        parsed: int = ROW_ID.parse(value)
        return parsed
    if type(value) is int:  # not bool, not float
        return int(ROW_ID.parse(str(value)))
    raise ValueError("must be an integer id")


RowId = Annotated[int, BeforeValidator(canonical_id)]
PathId = Annotated[int, BeforeValidator(canonical_id), Path(description="a row id: canonical digits, 1 or more")]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=80)]
Points = Annotated[StrictInt, Field(ge=-1000, le=100_000)]


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


class PlayerOut(BaseModel):
    id: int
    name: str
    region: str
    team_id: int | None
    created_at: datetime
    total: int


class TeamOut(BaseModel):
    id: int
    name: str
