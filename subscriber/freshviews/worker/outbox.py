"""The subscriber's relay: it moves what writers left in the outbox to the change log (``FRESHVIEWS_OUTBOX_URL``).

A writing process relays its own changes right after each commit; this one picks up whatever such a process
left behind (it died between its commit and its relay), wakes on every writing transaction's NOTIFY on
PostgreSQL, and otherwise looks every ``SUBSCRIBER_RELAY_INTERVAL`` seconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from freshviews.core.clients import RedisClient
from freshviews.core.settings import ConfigError
from freshviews.worker.settings import SubscriberSettings

if TYPE_CHECKING:
    from freshviews.outbox import Relay


@asynccontextmanager
async def outbox_relay(redis: RedisClient, settings: SubscriberSettings) -> AsyncIterator[Relay | None]:
    """The relay of ``settings.outbox_url`` (None when there is none), its database engine closed on exit."""
    if not settings.outbox_url:
        yield None
        return
    try:
        from sqlalchemy.ext.asyncio import create_async_engine

        from freshviews.outbox import Relay, async_url
    except ImportError as exc:
        raise ConfigError(
            f"FRESHVIEWS_OUTBOX_URL needs SQLAlchemy ({exc.name} is missing): pip install 'freshviews[sqlalchemy]'"
        ) from None
    try:
        url = async_url(settings.outbox_url)
    except ValueError as exc:
        raise ConfigError(f"FRESHVIEWS_OUTBOX_URL {exc}") from None
    engine = create_async_engine(url)
    try:
        yield Relay(engine, redis, settings)
    finally:
        await engine.dispose()
