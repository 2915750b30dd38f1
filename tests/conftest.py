"""Session fixtures: a redis-server on a free port, a clean Redis per test, a scratch PostgreSQL database.

Tests never touch 127.0.0.1:6379 or an existing database: everything they use is created here and removed
at the end of the session.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from redis.asyncio import Redis

from freshviews.core.embedded import EmbeddedRedis, find_redis_server, ping
from freshviews.core.keys import Keys

T = TypeVar("T")

DEFAULT_TEST_POSTGRES_DSN = "postgresql://root@127.0.0.1:5432/postgres"
REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long fault runs (marker ``chaos``) only run when asked for with ``-m chaos``: CI runs the bounded ones."""
    if "chaos" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="long fault run: select it with -m chaos")
    for item in items:
        if "chaos" in item.keywords:
            item.add_marker(skip)


def _redis_executable() -> str:
    # TEST_REDIS_SERVER lets one run the suite against a particular Redis (e.g. 6.2 and 7.x in turn).
    return os.environ.get("TEST_REDIS_SERVER") or shutil.which("redis-server") or find_redis_server()


@pytest.fixture(scope="session")
def redis_server_executable() -> str:
    """Path of the redis-server binary the suite runs."""
    return _redis_executable()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory, redis_server_executable: str) -> Iterator[EmbeddedRedis]:
    """One redis-server for the whole session, on a free port; tests may kill() and restart() it."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), executable=redis_server_executable)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _command(port: int, *parts: bytes) -> bytes:
    """Send one command over a plain socket and return the first reply line, without an event loop."""
    request = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%b\r\n" % (len(part), part) for part in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(256)
            if not chunk:
                break
            reply += chunk
    return reply


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """URL of the session Redis, emptied before each test."""
    if not ping(redis_server.port):
        # An earlier fault test killed it and did not bring it back; one broken test should not fail the rest.
        redis_server.restart(wipe=True)
    reply = _command(redis_server.port, b"FLUSHALL")
    assert reply.startswith(b"+OK"), f"FLUSHALL failed: {reply!r}"
    return redis_server.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """An asyncio client for the clean session Redis."""
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The distribution built from this checkout, as ``pip install .`` would build it."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)],
        check=True,
        timeout=300,
    )
    (built,) = out.glob("freshviews-*.whl")
    return built


@pytest.fixture
def keys() -> Keys:
    """The product's Redis key names, default prefix."""
    return Keys()


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
