"""Fixtures of the serving tests: the read routes in a minimal app on the session Redis, and a subscriber."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from freshviews.core.keys import Keys
from freshviews.serving import ServingSettings
from freshviews.worker.service import Subscriber
from freshviews.worker.settings import SubscriberSettings
from tests.support.redis_servers import client_for
from tests.support.serving import FAST, OpenClient, StartSubscriber, build_app
from tests.support.world import World, seeded_world, serving_registry


@pytest.fixture
def world() -> World:
    return seeded_world()


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


@pytest.fixture
def open_client(stack: AsyncExitStack, redis_url: str) -> OpenClient:
    """``await open_client(url=..., **settings)``: the app started over ASGI (no sockets) and an httpx client."""

    async def open_(*, url: str | None = None, **overrides: Any) -> tuple[httpx.AsyncClient, FastAPI]:
        app = build_app(serving_registry, url or redis_url, ServingSettings(**{**FAST, **overrides}))
        manager = await stack.enter_async_context(LifespanManager(app, startup_timeout=10, shutdown_timeout=10))
        client = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(manager.app), base_url="http://test", timeout=10)
        )
        return client, app

    return open_


@pytest.fixture
def start_subscriber(stack: AsyncExitStack, redis_url: str, keys: Keys, world: World) -> StartSubscriber:
    """Run a real subscriber (all its loops) on the session Redis for ``world``; stopped at the end of the test."""

    async def start(**overrides: Any) -> Subscriber[Any]:
        client = client_for(redis_url)
        options: dict[str, Any] = {
            "redis_url": redis_url,
            "consumer": "serving-tests",
            "sweep_interval": 0,
            "sample_rate": 0,
            "metrics_port": 0,
            "block_ms": 50,
            **overrides,
        }
        subscriber = Subscriber(
            redis=client, registry=serving_registry, ctx=world, settings=SubscriberSettings(**options)
        )
        task = asyncio.create_task(subscriber.run())

        async def stop() -> None:
            subscriber.stop()
            await asyncio.wait_for(task, 10)
            await client.aclose()

        stack.push_async_callback(stop)
        await subscriber.wait_for_redis()
        return subscriber

    return start
