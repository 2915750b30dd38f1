"""Fixtures for the subscriber tests: a toy world, subscribers built on the clean test Redis, a publisher."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from freshviews.core.keys import Keys
from freshviews.core.views import Registry
from freshviews.publish.publisher import Publisher
from freshviews.worker.service import Subscriber
from freshviews.worker.settings import SubscriberSettings
from tests.support.world import World, registry, seeded_world
from tests.worker.helpers import MakeSubscriber


@pytest.fixture
def world() -> World:
    return seeded_world()


@pytest.fixture
def make_subscriber(redis: Redis, redis_url: str, keys: Keys, world: World) -> MakeSubscriber:
    """Build a Subscriber on the test Redis for ``world``, in burst-friendly settings; overrides by keyword."""

    def make(
        *,
        consumer: str = "c1",
        client: Redis | None = None,
        ctx: World | None = None,
        views: Registry[World] = registry,
        **overrides: Any,
    ) -> Subscriber[World]:
        options: dict[str, Any] = {
            "redis_url": redis_url,
            "consumer": consumer,
            "sweep_interval": 0,
            # The sampler recomputes keys on its own; its tests turn it on.
            "sample_rate": 0,
            "metrics_port": 0,
            "reclaim_idle_ms": 100,
            "retry_backoff": 0.01,
            "block_ms": 100,
            **overrides,
        }
        settings = SubscriberSettings(**options)
        return Subscriber(redis=client or redis, registry=views, ctx=world if ctx is None else ctx, settings=settings)

    return make


@pytest.fixture
def publisher(redis: Redis, keys: Keys) -> Publisher:
    # A generous timeout: a silently dropped publish (the product's contract) would make tests lie.
    return Publisher(redis, keys, timeout=5.0)


@pytest.fixture
async def updates(redis: Redis, keys: Keys) -> AsyncIterator[Callable[[], Awaitable[list[str]]]]:
    """Subscribe to the update channel now; the yielded function returns the messages received so far."""
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.updates_channel)
    await pubsub.get_message(timeout=1.0)  # the subscribe confirmation
    received: list[str] = []

    async def collect() -> list[str]:
        while (message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)) is not None:
            received.append(message["data"].decode())
        return list(received)

    try:
        yield collect
    finally:
        await pubsub.aclose()
