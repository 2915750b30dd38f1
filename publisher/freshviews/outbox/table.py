"""The outbox: a table in the application's own database holding changes not yet in the change log.

A captured change is a row of this table, inserted in the same transaction as the write it describes, so a
committed write always has its change and a rolled-back one never does. The relay (:mod:`freshviews.outbox.relay`)
moves rows to the change log and deletes them. Each row's ``id`` is its stable identity: a row relayed twice (the
relay died between appending and deleting) reaches the log twice with the same origin ``outbox:<id>``, which costs
one extra recompute and nothing else, since a recompute reads the source of truth, not the change.

The table, for a migration of your own (``outbox_table(Base.metadata)`` puts it in your metadata, so Alembic's
autogenerate or ``metadata.create_all`` creates it)::

    -- PostgreSQL
    CREATE TABLE freshviews_outbox (
        id BIGSERIAL PRIMARY KEY,
        change TEXT NOT NULL,        -- the change as it goes on the wire (JSON)
        created_ms BIGINT NOT NULL   -- when it was captured, epoch milliseconds
    );
    -- SQLite
    CREATE TABLE freshviews_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT, change TEXT NOT NULL, created_ms BIGINT NOT NULL
    );

AUTOINCREMENT on SQLite keeps ids from being reused after the newest rows are deleted, so an id names one
change forever.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import BigInteger, Column, Integer, MetaData, Table, Text, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

#: The table's default name.
OUTBOX_TABLE = "freshviews_outbox"
#: Drivers a database URL may name for the outbox, and the async driver the relay uses instead.
_ASYNC_SCHEMES = {
    "postgresql://": "postgresql+asyncpg://",
    "postgres://": "postgresql+asyncpg://",
    "postgresql+asyncpg://": "postgresql+asyncpg://",
    "sqlite://": "sqlite+aiosqlite://",
    "sqlite+aiosqlite://": "sqlite+aiosqlite://",
}


#: An outbox row as a relay sends it: its id and the change's JSON.
OutboxRow = tuple[int, str]


def async_url(url: str) -> str:
    """The SQLAlchemy async URL for a database URL as users write it (``postgresql://``, ``sqlite:///``)."""
    url = url.strip()
    for scheme, driver in _ASYNC_SCHEMES.items():
        if url.startswith(scheme):
            return driver + url[len(scheme) :]
    raise ValueError("must start with postgresql://, postgres:// or sqlite:///")


def outbox_table(metadata: MetaData | None = None, *, name: str = OUTBOX_TABLE) -> Table:
    """The outbox table, in ``metadata`` (your models' metadata, so that your migrations create it) or its own."""
    metadata = metadata if metadata is not None else MetaData()
    existing = metadata.tables.get(name)
    if existing is not None:
        return existing
    return Table(
        name,
        metadata,
        # BIGINT on PostgreSQL; SQLite's rowid alias must be spelled INTEGER to autoincrement.
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("change", Text, nullable=False),
        Column("created_ms", BigInteger, nullable=False),
        sqlite_autoincrement=True,
    )


@dataclass(frozen=True)
class OutboxStatus:
    """How many changes wait in the outbox and how long the oldest has waited (0 when empty)."""

    rows: int
    oldest_seconds: float


async def outbox_status(engine: AsyncEngine, table: Table) -> OutboxStatus:
    """One query: the outbox's depth and the age of its oldest row (for metrics, ``/healthz`` and ``check``)."""
    async with engine.connect() as conn:
        rows, oldest = (await conn.execute(select(func.count(), func.min(table.c.created_ms)))).one()
    age = max(0.0, time.time() - oldest / 1000) if oldest is not None else 0.0
    return OutboxStatus(rows=int(rows), oldest_seconds=round(age, 3))
