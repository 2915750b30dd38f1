"""The scoreboard stack (backend and subscriber processes, SQLite) on the session's Redis Cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import Stack


@pytest.fixture
def stack(tmp_path: Path, redis_url: str) -> Iterator[Stack]:
    """A seeded database and the cluster (``redis_url``: every master emptied); the test starts the processes."""
    stack = Stack(tmp_path, redis_url, f"sqlite+aiosqlite:///{tmp_path / 'scoreboard.db'}")
    stack.seed()
    try:
        yield stack
    finally:
        stack.stop()
        print(stack.logs())  # shown by pytest only when the test failed
