"""Fixtures of the end-to-end tests: the whole stack as real processes on the session Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from freshviews.core.embedded import EmbeddedRedis
from tests.support.stack import Stack


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The stack's database: a SQLite file, then a fresh PostgreSQL database (mandatory in CI)."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite+aiosqlite:///{tmp_path / 'scoreboard.db'}"


@pytest.fixture
def stack(tmp_path: Path, redis_url: str, redis_server: EmbeddedRedis, database_url: str) -> Iterator[Stack]:
    """A seeded database and the session Redis; the test starts the processes it needs. Logs print on failure."""
    stack = Stack(tmp_path, redis_url, database_url, redis_server=redis_server)
    stack.seed()
    try:
        yield stack
    finally:
        stack.stop()
        print(stack.logs())  # shown by pytest only when the test failed
