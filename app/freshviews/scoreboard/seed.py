"""Creating the schema and filling an empty database with deterministic, realistic-looking scoreboard data."""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from freshviews.scoreboard.db import Database
from freshviews.scoreboard.models import REGIONS, Base, Player, Score, Team
from freshviews.scoreboard.settings import AppSettings

logger = logging.getLogger(__name__)

#: The default random seed: the same counts always give the same rows.
SEED = 20_241_128
_CHUNK = 5_000
_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
_ADJECTIVES = ("Crimson", "Silent", "Rapid", "Iron", "Lucky", "Frozen", "Golden", "Shadow", "Electric", "Wild")
_NOUNS = ("Falcons", "Otters", "Comets", "Wolves", "Pixels", "Titans", "Herons", "Vipers", "Rockets", "Owls")
_SYLLABLES = ("ka", "ri", "to", "mi", "zu", "ne", "lo", "sa", "vi", "da", "ko", "el", "an", "yu", "or")


async def create_schema(db: Database) -> None:
    """Create the tables and indexes that do not exist yet."""
    for attempt in (1, 2):
        try:
            async with db.engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            return
        except DBAPIError:
            # The app and the subscriber may start together: if the other one created a table between our
            # existence check and our CREATE, the second pass sees it and creates nothing.
            if attempt == 2:
                raise
            logger.info("schema creation raced another process; checking again")


async def drop_schema(db: Database) -> None:
    async with db.engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)


async def is_empty(db: Database) -> bool:
    async with db.engine.connect() as conn:
        for model in (Team, Player, Score):
            if (await conn.execute(select(model.id).limit(1))).first() is not None:
                return False
    return True


async def ensure_seeded(db: Database, settings: AppSettings, *, seed: int = SEED) -> bool:
    """Create the schema and, only when every table is empty, seed it. Return whether this call seeded."""
    await create_schema(db)
    if not await is_empty(db):
        return False
    try:
        await seed_database(
            db, players=settings.seed_players, teams=settings.seed_teams, scores=settings.seed_scores, seed=seed
        )
    except IntegrityError:
        # Rows carry explicit ids, so a second process seeding at the same time collides and backs off here.
        logger.info("another process seeded the database first")
        return False
    return True


async def seed_database(db: Database, *, players: int, teams: int, scores: int, seed: int = SEED) -> None:
    """Insert ``teams`` teams, ``players`` players and ``scores`` scores in one transaction (ids from 1)."""
    if scores and not players:
        raise ValueError("scores need at least one player")
    started = time.perf_counter()
    rng = random.Random(seed)
    team_rows = [{"id": i, "name": _team_name(rng, i)} for i in range(1, teams + 1)]
    player_rows, weights, skills = _players(rng, players, teams)
    score_rows = _scores(rng, scores, weights, skills)
    for row in score_rows:  # the totals the write routes keep, as if every score had come through them
        player = player_rows[row["player_id"] - 1]
        player["total"] += row["points"]
        player["score_count"] += 1
    async with db.engine.begin() as conn:
        for model, rows in ((Team, team_rows), (Player, player_rows), (Score, score_rows)):
            for chunk in _chunks(rows, _CHUNK):
                await conn.execute(insert(model), chunk)
        if db.dialect == "postgresql":
            await _advance_sequences(conn)
    if db.dialect == "postgresql":
        async with db.engine.begin() as conn:
            # Planner statistics for the freshly filled tables (autovacuum would get there, minutes later).
            await conn.execute(text("ANALYZE"))
    logger.info(
        "seeded %d teams, %d players and %d scores in %.1fs",
        teams,
        players,
        scores,
        time.perf_counter() - started,
    )


def _players(rng: random.Random, count: int, teams: int) -> tuple[list[dict[str, Any]], list[float], list[float]]:
    rows: list[dict[str, Any]] = []
    # Regions are uneven, like real traffic; Antarctica stays small.
    region_weights = (24, 9, 26, 6, 7, 18, 9, 1)
    weights: list[float] = []
    skills: list[float] = []
    for player_id in range(1, count + 1):
        rows.append(
            {
                "id": player_id,
                "name": _player_name(rng, player_id),
                "region": rng.choices(REGIONS, region_weights)[0],
                # About one player in ten plays solo.
                "team_id": rng.randint(1, teams) if teams and rng.random() > 0.1 else None,
                "created_at": _EPOCH + timedelta(seconds=rng.uniform(0, 60 * 86_400)),
                "total": 0,
                "score_count": 0,
            }
        )
        # How often a player plays, and how well: both long-tailed, so totals spread out and ranks mean something.
        weights.append(rng.lognormvariate(0, 1.0))
        skills.append(rng.lognormvariate(0, 0.5))
    return rows, weights, skills


def _scores(rng: random.Random, count: int, weights: list[float], skills: list[float]) -> list[dict[str, Any]]:
    if count == 0:
        return []
    who = rng.choices(range(1, len(weights) + 1), cum_weights=list(itertools.accumulate(weights)), k=count)
    start = _EPOCH + timedelta(days=60)
    rows = []
    for score_id, player_id in enumerate(who, start=1):
        rows.append(
            {
                "id": score_id,
                "player_id": player_id,
                "points": game_points(rng, skills[player_id - 1]),
                # One game every ~20s, oldest first, so ids and times agree.
                "created_at": start + timedelta(seconds=20 * score_id + rng.randint(0, 19)),
            }
        )
    return rows


def game_points(rng: random.Random, skill: float = 1.0) -> int:
    """The points of one game: mostly tens to hundreds, a long tail of big wins, and the odd penalty."""
    if rng.random() < 0.03:
        return -rng.randint(1, 200)
    return min(100_000, int(rng.expovariate(1 / (120 * skill))))


def _team_name(rng: random.Random, team_id: int) -> str:
    return f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} {team_id}"


def _player_name(rng: random.Random, player_id: int) -> str:
    syllables = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3)))
    return f"{syllables.capitalize()}{player_id}"


def _chunks(rows: Sequence[dict[str, Any]], size: int) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


async def _advance_sequences(conn: AsyncConnection) -> None:
    # Explicit ids do not move PostgreSQL's id sequences; without this the first API insert would reuse id 1.
    for model in (Team, Player, Score):
        table = model.__tablename__
        await conn.execute(
            select(func.setval(func.pg_get_serial_sequence(table, "id"), select(func.max(model.id)).scalar_subquery()))
        )
