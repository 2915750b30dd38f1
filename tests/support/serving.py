"""The read side for tests: a generic app mounting the read routes, a real uvicorn server, and cache writes
through the real fenced store."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from freshviews.core.clients import RedisClient
from freshviews.core.connections import create_redis
from freshviews.core.keys import Keys
from freshviews.core.views import Registry
from freshviews.serving import Serving, ServingSettings, cache_router, mount
from freshviews.serving.listen import listening_socket, log_config
from freshviews.serving.protocol import deadline_protocol
from freshviews.worker.service import Subscriber
from freshviews.worker.store import CacheStore, PendingWrite
from tests.support.helpers import free_port, wait_until

#: Short waits so that the tests of misses and timeouts stay fast.
FAST: dict[str, Any] = {"cache_miss_wait": 0.3, "cache_min_version_wait": 1.0, "cache_redis_timeout": 0.5}

#: ``await open_client(url=..., **settings)`` (fixture): an app over ASGI and an httpx client for it.
OpenClient = Callable[..., Awaitable[tuple[httpx.AsyncClient, FastAPI]]]
#: ``await start_subscriber(**settings)`` (fixture): a real subscriber running all its loops.
StartSubscriber = Callable[..., Awaitable[Subscriber[Any]]]


def serving_of(app: FastAPI) -> Serving:
    serving: Serving = app.state.serving
    return serving


def build_app(
    registry: Registry[Any],
    redis_url: str,
    settings: ServingSettings,
    *,
    redis_timeout: float = 2.0,
    fast_path: bool = True,
) -> FastAPI:
    """A minimal user app: clients and Serving built in the lifespan, the read side mounted as a user mounts it
    (with ``fast_path=False``, the routes alone: no middleware answering before them).

    The Serving is also left on ``app.state.serving`` so tests can look at the hub and the counters.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        redis = create_redis(redis_url, timeout=redis_timeout)
        try:
            async with Serving(redis=redis, settings=settings) as serving:
                app.state.serving = serving
                yield {"serving": serving}
        finally:
            await redis.aclose()

    app = FastAPI(lifespan=lifespan)
    if fast_path:
        mount(app, registry)
    else:
        app.include_router(cache_router(registry))
    return app


class _Server(uvicorn.Server):
    # The test process keeps its own signal handlers (pytest's); stopping goes through should_exit.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@asynccontextmanager
async def live_server(app: FastAPI, settings: ServingSettings | None = None) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free port in this event loop, on the socket and with the request deadlines
    ``freshviews serve`` would use for ``settings`` (default: the defaults); yield its base URL."""
    port = free_port()
    # uvicorn's logging as `freshviews serve` sets it up (the filter of dropped streams included), except the
    # root logger, where pytest's log capture listens.
    logging_config = log_config("warning")
    del logging_config["root"]
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        log_config=logging_config,
        lifespan="on",
        timeout_graceful_shutdown=2,
        http=deadline_protocol(settings or ServingSettings()),
    )
    sock = listening_socket(config, settings or ServingSettings())
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await wait_until(lambda: server.started or task.done(), 10, message="uvicorn did not start")
        assert server.started, "uvicorn failed to start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


async def put(redis: RedisClient, keys: Keys, key: str, value: Any | bytes | None) -> int:
    """Write ``value`` (JSON-able, raw bytes, or None for a tombstone) the way the subscriber does; its version."""
    store = CacheStore(redis, keys)
    (ticket,) = await store.tickets([key])
    data = value if isinstance(value, bytes) or value is None else json.dumps(value).encode()
    (outcome,) = await store.write([PendingWrite(key, ticket, data)])
    assert outcome.value == 1, f"write of {key} was {outcome!r}"
    return ticket
