"""Fixtures of the scoreboard backend tests: a small seeded SQLite database and the app over ASGI."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from redis.asyncio import Redis

from freshviews.scoreboard.db import Database, open_database
from freshviews.scoreboard.main import create_app
from freshviews.scoreboard.seed import ensure_seeded
from freshviews.scoreboard.settings import AppSettings
from tests.support.changes import Log

# Small enough to seed in well under a second, big enough that every region and team has players.
SMALL = {"seed_players": 60, "seed_teams": 6, "seed_scores": 600}


MakeSettings = Callable[..., AppSettings]


@pytest.fixture
def make_settings(tmp_path: Path) -> MakeSettings:
    """``make_settings(redis_url, **overrides)``: settings of a small SQLite scoreboard in this test's tmp_path."""

    def make(redis_url: str, **overrides: object) -> AppSettings:
        values: dict[str, object] = {
            "data_dir": tmp_path,
            "redis_url": redis_url,
            "database_url": f"sqlite:///{tmp_path / 'scoreboard.db'}",
            **SMALL,
            **overrides,
        }
        return AppSettings(**values)  # type: ignore[arg-type]

    return make


@pytest.fixture
def app_settings(make_settings: MakeSettings, redis_url: str) -> AppSettings:
    return make_settings(redis_url)


@pytest.fixture
async def db(app_settings: AppSettings) -> AsyncIterator[Database]:
    """The seeded database, opened directly (the app, when also started, opens its own engine on the same file)."""
    database = open_database(app_settings.database_url_resolved())
    await ensure_seeded(database, app_settings)
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
async def client(app_settings: AppSettings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(app_settings)
    async with (
        LifespanManager(app, startup_timeout=30) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(manager.app), base_url="http://test") as http,
    ):
        yield http


@pytest.fixture
def log(db: Database, redis: Redis) -> Log:
    return Log(db.engine, redis)
