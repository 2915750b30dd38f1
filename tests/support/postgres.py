"""A scratch PostgreSQL database per test, on the server at TEST_POSTGRES_DSN (a pytest plugin: tests/conftest.py).

Tests never use an existing database: each gets one created here and dropped after it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

T = TypeVar("T")

DEFAULT_TEST_POSTGRES_DSN = "postgresql://root@127.0.0.1:5432/postgres"


def _run_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a private event loop in another thread.

    Session fixtures are synchronous; a thread keeps this loop away from the ones pytest-asyncio manages.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(coro)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="postgres-fixture")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value


async def _create_database(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        try:
            # FORCE (PostgreSQL 13+) ends connections a test leaked instead of failing the drop.
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except asyncpg.PostgresSyntaxError:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        await conn.close()


def _database_url(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(scheme="postgresql+asyncpg", path=f"/{name}"))


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a fresh, empty database on the server at TEST_POSTGRES_DSN, dropped after the test.

    Skips when that server cannot be reached, unless REQUIRE_POSTGRES=1 (as in CI), where it fails.
    """
    dsn = os.environ.get("TEST_POSTGRES_DSN", DEFAULT_TEST_POSTGRES_DSN)
    # The name is interpolated into SQL, which is safe only because it is built here from hex digits.
    name = f"freshviews_test_{secrets.token_hex(6)}"
    try:
        _run_in_thread(_create_database(dsn, name))
    except Exception as exc:
        reason = f"PostgreSQL at {dsn} is not usable ({type(exc).__name__}: {exc}); set TEST_POSTGRES_DSN"
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason} (REQUIRE_POSTGRES=1)")
        pytest.skip(reason)
    try:
        yield _database_url(dsn, name)
    finally:
        _run_in_thread(_drop_database(dsn, name))
