"""The scoreboard schema: teams, players in a region and optionally a team, and the scores they post."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal, get_args

from sqlalchemy import DateTime, ForeignKey, Index, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

Region = Literal["na", "sa", "eu", "af", "me", "as", "oc", "an"]
#: Every region a player can be in; also the parameter values of the ``leaderboard/{region}`` view.
REGIONS: tuple[Region, ...] = get_args(Region)


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """The same instant, aware, in UTC: SQLite hands back naive datetimes; JSON must not depend on the database."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(80))


class Player(Base):
    __tablename__ = "players"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    region: Mapped[str] = mapped_column(String(2), index=True)
    # A deleted team leaves its players teamless rather than deleting them.
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="SET NULL"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Score(Base):
    __tablename__ = "scores"
    # (player_id, points) covers the per-player sums every view is built from, so they never touch the table;
    # (player_id, created_at) serves a player's latest scores.
    __table_args__ = (
        Index("ix_scores_player_points", "player_id", "points"),
        Index("ix_scores_player_created", "player_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    player_id: Mapped[int] = mapped_column(ForeignKey("players.id", ondelete="CASCADE"))
    points: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
