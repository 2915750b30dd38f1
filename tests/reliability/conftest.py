"""Fixtures of the reliability scenarios."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from freshviews.core.embedded import EmbeddedRedis
from freshviews.publish.publisher import Publisher
from tests.reliability.harness import KEYS, World
from tests.support.world import seed_rows


@pytest.fixture
def source_url(tmp_path: Path, redis_server_executable: str) -> Iterator[str]:
    """A Redis of its own holding the rows: the source of truth survives what the scenarios do to the cache."""
    server = EmbeddedRedis(tmp_path / "source", executable=redis_server_executable)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
async def world(tmp_path: Path, redis_url: str, source_url: str) -> AsyncIterator[World]:
    cache = Redis.from_url(redis_url)
    source = Redis.from_url(source_url)
    await seed_rows(source)
    world = World(tmp_path, redis_url, source_url, cache, source, Publisher(cache, KEYS, timeout=5.0))
    sampler = asyncio.create_task(world.sample())
    try:
        yield world
    finally:
        world.sampling = False
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            async with asyncio.timeout(5):
                await sampler
        for proc, _ in world.subscribers.values():
            proc.stop()
        print(world.logs())  # shown when the test failed
        await cache.aclose()
        await source.aclose()
