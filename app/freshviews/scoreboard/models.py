"""The scoreboard schema: teams, players in a region and optionally a team, and the scores they post.

A player row also holds its ``total`` (the sum of its scores' points) and ``score_count``, kept by the write
routes in the same transaction as each score: ranks and leaderboards then read one indexed column instead of
summing every score, and a change to a player's total arrives as a change of the player row with its total
before and after, which is what rank shifts are computed from (:mod:`freshviews.scoreboard.effects`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal, get_args

from sqlalchemy import DateTime, ForeignKey, Index, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from freshviews.outbox import outbox_table

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
    # Deleting a team through the session sets its members' team_id to NULL itself (rather than leaving it to the
    # foreign key's SET NULL), so each member's move is a captured change.
    members: Mapped[list[Player]] = relationship(back_populates="team")


class Player(Base):
    __tablename__ = "players"
    # (region, total) serves ranks and leaderboards; (total) the global top.
    __table_args__ = (Index("ix_players_region_total", "region", "total"), Index("ix_players_total", "total"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    region: Mapped[str] = mapped_column(String(2), index=True)
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="SET NULL"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: The sum of the player's scores' points, and their number: kept by every write to a score.
    total: Mapped[int] = mapped_column(Integer, default=0)
    score_count: Mapped[int] = mapped_column(Integer, default=0)
    team: Mapped[Team | None] = relationship(back_populates="members")


class Score(Base):
    __tablename__ = "scores"
    # (player_id, created_at) serves a player's latest scores.
    __table_args__ = (Index("ix_scores_player_created", "player_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # A deleted player's scores go with it, by the database (they affect no view the player's own change does not).
    player_id: Mapped[int] = mapped_column(ForeignKey("players.id", ondelete="CASCADE"))
    points: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


#: The outbox, in the scoreboard's own metadata: created with its tables, written in its transactions.
OUTBOX = outbox_table(Base.metadata)
