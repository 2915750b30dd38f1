"""The transactional outbox: changes captured from SQLAlchemy in the write's own transaction, and the relay that
moves them to the change log (needs SQLAlchemy 2: ``pip install 'freshviews[sqlalchemy]'``).

In an app's lifespan, one call does both::

    async with capturing(sessions, registry, redis=redis, settings=settings):
        yield {...}

after which every ORM write to an entity the views depend on records its change, in its transaction, and the
relay appends it to the change log right after the commit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from freshviews.core.clients import RedisClient
from freshviews.core.settings import RedisSettings
from freshviews.core.views import Registry
from freshviews.outbox.capture import Capture, track
from freshviews.outbox.relay import Relay
from freshviews.outbox.table import OUTBOX_TABLE, OutboxStatus, async_url, outbox_status, outbox_table

__all__ = [
    "OUTBOX_TABLE",
    "Capture",
    "OutboxStatus",
    "Relay",
    "async_url",
    "capturing",
    "outbox_status",
    "outbox_table",
    "track",
]


@asynccontextmanager
async def capturing(
    sessions: async_sessionmaker[Any],
    registry: Registry[Any],
    *,
    redis: RedisClient,
    settings: RedisSettings,
    table: Table | None = None,
    engine: AsyncEngine | None = None,
    interval: float = 1.0,
    relay: bool = True,
) -> AsyncIterator[Relay]:
    """Track ``sessions`` for ``registry`` and run a relay in this process, for as long as the block runs.

    ``engine`` is where the outbox lives (default: the sessionmaker's bind); ``table`` the outbox table (default:
    ``freshviews_outbox`` in a metadata of its own: create it with your schema); ``interval`` how often the relay
    also looks without being woken, seconds. With ``relay`` False the changes are captured but this process does
    not relay them: the subscriber's relay does (``FRESHVIEWS_OUTBOX_URL``), up to its interval later, or at once
    on PostgreSQL's NOTIFY. Yields the :class:`Relay` (not running without ``relay``).
    """
    bind = engine if engine is not None else sessions.kw.get("bind")
    if not isinstance(bind, AsyncEngine):
        raise ValueError("capturing() needs the engine of the outbox: pass engine= or bind the sessionmaker to one")
    outbox = table if table is not None else outbox_table()
    mover = Relay(bind, redis, settings, table=outbox)
    capture = track(sessions, registry, table=outbox, on_commit=mover.hand if relay else None)
    try:
        if not relay:
            yield mover
            return
        async with mover.running(interval=interval):
            yield mover
    finally:
        capture.remove()
