"""The scoreboard database: one async engine and session factory, and a count of the statements it ran."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from prometheus_client import Counter
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from freshviews.core.settings import load
from freshviews.scoreboard.settings import AppSettings

logger = logging.getLogger(__name__)

DB_QUERIES = Counter("freshviews_db_queries_total", "SQL statements the backend sent to its database (backend work)")

#: How long an SQLite connection waits for another process's write lock before failing, milliseconds.
SQLITE_BUSY_TIMEOUT_MS = 10_000


@dataclass(eq=False)
class Database:
    """An open database. Build it with :func:`open_database`; close it with :meth:`close`."""

    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    #: Statements executed through this engine since it was opened (the per-instance twin of DB_QUERIES).
    queries: int = field(default=0)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def ping(self) -> None:
        """Run ``SELECT 1``; raises when the database cannot be reached."""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()


def open_database(url: str) -> Database:
    """Create the engine for an async SQLAlchemy URL (``sqlite+aiosqlite://`` or ``postgresql+asyncpg://``).

    Nothing connects yet. SQLite files get WAL and a busy timeout, so the app and the subscriber process can
    read and write the same file concurrently, and enforced foreign keys.
    """
    parsed = make_url(url)
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    else:
        kwargs.update(pool_pre_ping=True, pool_size=10, max_overflow=10)
    engine = create_async_engine(url, **kwargs)
    # Rows stay readable after commit: the write routes answer with the row they just committed.
    db = Database(engine, async_sessionmaker(engine, expire_on_commit=False))

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _count(*_args: Any) -> None:
        db.queries += 1
        DB_QUERIES.inc()

    if parsed.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return db


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS:d}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Under WAL, NORMAL loses no committed data on an application crash and skips an fsync per commit.
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


@asynccontextmanager
async def database_from_env() -> AsyncIterator[Database]:
    """Open the database the environment names: the subscriber's context for the scoreboard's views.

    It neither creates nor seeds the schema: that is the backend's (``ensure_seeded`` in its lifespan), and a
    subscriber that starts first retries its warm-up until the tables are there.
    """
    db = open_database(load(AppSettings).database_url_resolved())
    try:
        yield db
    finally:
        await db.close()


def get_db(request: Request) -> Database:
    """FastAPI dependency: the :class:`Database` the app's lifespan put in its state as ``db``."""
    db = getattr(request.state, "db", None)
    if not isinstance(db, Database):
        raise RuntimeError("no Database in the app state: yield {'db': Database(...)} from the lifespan")
    return db


async def get_session(db: Annotated[Database, Depends(get_db)]) -> AsyncIterator[AsyncSession]:
    async with db.sessionmaker() as session:
        yield session


DbDep = Annotated[Database, Depends(get_db)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
