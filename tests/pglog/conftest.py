"""Fixtures for the PostgreSQL log source: the session's own cluster, a database with the items table, the
subscriber settings naming both, a source running in the test's loop, and the change log read back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from freshviews.core.events import Change, decode
from freshviews.core.keys import Keys
from freshviews.pglog.source import LogSource
from freshviews.worker.pglog import log_source
from freshviews.worker.settings import SubscriberSettings
from tests.pglog.views import SCHEMA, registry
from tests.support.pgcluster import Database


@pytest.fixture
def db(pg_database: Database) -> Database:
    pg_database.psql(SCHEMA + "CREATE TABLE audit (id integer PRIMARY KEY, note text);")
    return pg_database


@pytest.fixture
def settings(db: Database, redis_url: str) -> SubscriberSettings:
    return SubscriberSettings(
        redis_url=redis_url,
        pglog_url=db.url,
        pglog_slot=db.slot,
        pglog_publication=db.slot,
        consumer="c1",
        sweep_interval=0,
        metrics_port=0,
        block_ms=100,
        # The consistency sampler recomputes keys of its own: off, so that recomputes are the changes' alone.
        sample_rate=0,
    )


RunSource = Callable[..., contextlib.AbstractAsyncContextManager[LogSource]]


@pytest.fixture
def running_source(redis: Redis, settings: SubscriberSettings) -> RunSource:
    """``async with running_source() as source``: a log source for the test views, running meanwhile."""

    @contextlib.asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[LogSource]:
        source = log_source(redis, settings.model_copy(update=overrides), registry)
        assert source is not None
        task = asyncio.create_task(source.run())
        try:
            yield source
        finally:
            source.stop()
            await asyncio.wait_for(task, 10)

    return run


async def logged(redis: Redis, keys: Keys) -> list[Change]:
    """Every change in the change log, oldest first."""
    return [decode(cast(dict[bytes, bytes], fields)) for _, fields in await redis.xrange(keys.changes)]
