"""mount(): the read routes and the fast path in one call, and an app whose lifespan forgot to yield the runtime
fails at start-up with the fix, not with a 500 at its first read."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from redis.asyncio import Redis
from starlette.types import ASGIApp, Message

from freshviews.core.connections import create_redis
from freshviews.core.keys import Keys
from freshviews.serving import Serving, ServingSettings, mount
from tests.support.helpers import free_port
from tests.support.metrics import sample
from tests.support.serving import FAST, build_app, put
from tests.support.world import serving_registry


def _forgetful_app(redis_url: str) -> FastAPI:
    """An app that builds its Serving but yields nothing: a mistake the routes could only report at run time."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = create_redis(redis_url)
        try:
            async with Serving(redis=redis, settings=ServingSettings(**FAST)):
                yield
        finally:
            await redis.aclose()

    app = FastAPI(lifespan=lifespan)
    mount(app, serving_registry)
    return app


async def _startup(app: ASGIApp) -> Message:
    """Run the ASGI lifespan's start-up as a server does; the app's answer to it."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    answers: asyncio.Queue[Message] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.ensure_future(app(scope, inbox.get, answers.put))
    try:
        async with asyncio.timeout(10):
            return await answers.get()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_lifespan_that_yields_no_serving_fails_start_up_with_the_fix(redis_url: str) -> None:
    answer = await _startup(_forgetful_app(redis_url))
    assert answer["type"] == "lifespan.startup.failed"
    assert "\n" not in answer["message"]
    assert "yield {'serving': serving}" in answer["message"]


async def test_a_lifespan_that_yields_the_serving_starts(redis_url: str) -> None:
    answer = await _startup(build_app(serving_registry, redis_url, ServingSettings(**FAST)))
    assert answer == {"type": "lifespan.startup.complete"}


async def test_uvicorn_refuses_to_serve_it_and_logs_why(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    config = uvicorn.Config(_forgetful_app(redis_url), host="127.0.0.1", port=free_port(), lifespan="on")
    server = uvicorn.Server(config)
    # uvicorn's loggers do not propagate to the root, where caplog listens.
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addHandler(caplog.handler)
    try:
        # Start-up fails at once; the bound only keeps a regression from hanging the suite.
        async with asyncio.timeout(10):
            with pytest.raises(SystemExit) as exited:
                await server.serve()
        # uvicorn exits without closing the lifespan: a process would end here. This one goes on, so close it.
        await server.lifespan.shutdown()
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    assert exited.value.code == 3  # uvicorn's status for a failed start-up
    assert not server.started
    assert "yield {'serving': serving}" in caplog.text


async def test_mount_serves_the_routes_and_the_fast_path_under_its_prefix(
    redis_url: str, redis: Redis, keys: Keys
) -> None:
    app = FastAPI(lifespan=build_app(serving_registry, redis_url, ServingSettings(**FAST)).router.lifespan_context)
    mount(app, serving_registry, prefix="/views-cache")
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(manager.app), base_url="http://t") as client,
    ):
        views: list[dict[str, Any]] = (await client.get("/views-cache/views")).json()
        assert [view["template"] for view in views] == ["item/{id}", "color/{color}"]
        assert (await client.get("/cache/views")).status_code == 404
        version = await put(redis, keys, "item/1", {"id": 1})
        assert (await client.get("/views-cache/item/1")).headers["etag"] == f'"{version}"'  # by the route
        before = _fast_200()
        assert (await client.get("/views-cache/item/1")).headers["etag"] == f'"{version}"'
        assert _fast_200() == before + 1  # from memory, before routing


def _fast_200() -> float:
    return sample("freshviews_fast_reads_total", {"status": "200"})
