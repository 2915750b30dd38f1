"""Helpers of the serving tests: a generic app mounting the read routes, a real uvicorn server, an SSE reader,
cache writes through the real fenced store, and a TCP proxy in front of Redis that counts round trips and can
freeze (a Redis that accepts connections but never answers)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from redis.asyncio import Redis

from freshviews.core.connections import create_redis
from freshviews.core.keys import Keys
from freshviews.core.views import Registry
from freshviews.serving import Serving, ServingSettings, cache_router, mount
from freshviews.serving.listen import listening_socket, log_config
from freshviews.worker.service import Subscriber
from freshviews.worker.store import CacheStore, PendingWrite
from tests.support.helpers import free_port, wait_until

#: Short waits so that the tests of misses and timeouts stay fast.
FAST = {"cache_miss_wait": 0.3, "cache_min_version_wait": 1.0, "cache_redis_timeout": 0.5}

#: ``await open_client(url=..., **settings)`` (fixture): an app over ASGI and an httpx client for it.
OpenClient = Callable[..., Awaitable[tuple[httpx.AsyncClient, FastAPI]]]
#: ``await start_subscriber(**settings)`` (fixture): a real subscriber running all its loops.
StartSubscriber = Callable[..., Awaitable[Subscriber]]


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
    """Serve ``app`` with uvicorn on a free port in this event loop, on the socket ``python -m app serve`` would
    make for ``settings`` (default: the defaults); yield its base URL."""
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


async def put(redis: Redis, keys: Keys, key: str, value: Any | bytes | None) -> int:
    """Write ``value`` (JSON-able, raw bytes, or None for a tombstone) the way the subscriber does; its version."""
    store = CacheStore(redis, keys)
    (ticket,) = await store.tickets([key])
    data = value if isinstance(value, bytes) or value is None else json.dumps(value).encode()
    (outcome,) = await store.write([PendingWrite(key, ticket, data)])
    assert outcome.value == 1, f"write of {key} was {outcome!r}"
    return ticket


@dataclass
class Event:
    event: str
    id: str | None
    data: str
    raw: str

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class SSEReader:
    """Parses a text/event-stream response into events; comment lines (heartbeats) are kept apart."""

    response: httpx.Response
    comments: list[str] = field(default_factory=list)
    _lines: AsyncIterator[str] | None = None

    async def next(self, timeout: float = 5.0) -> Event:  # noqa: ASYNC109 (a deadline for a test read)
        if self._lines is None:
            self._lines = self.response.aiter_lines()
        fields: dict[str, list[str]] = {}
        raw: list[str] = []
        async with asyncio.timeout(timeout):
            async for line in self._lines:
                if line == "":
                    if fields:
                        return Event(
                            event=fields.get("event", ["message"])[-1],
                            id=fields.get("id", [None])[-1],
                            data="\n".join(fields.get("data", [])),
                            raw="\n".join(raw),
                        )
                    continue
                if line.startswith(":"):
                    self.comments.append(line)
                    continue
                raw.append(line)
                name, _, value = line.partition(":")
                fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)
        raise EOFError("the stream ended")


class RedisProxy:
    """A TCP proxy to Redis: counts the chunks clients send (one per round trip) and can freeze all traffic."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self.client_writes = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        self._writers += [writer, up_writer]
        for src, dst, count in ((reader, up_writer, True), (up_reader, writer, False)):
            task = asyncio.create_task(self._pump(src, dst, count))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                await self._flowing.wait()
                if count:
                    self.client_writes += 1
                dst.write(data)
                await dst.drain()
        dst.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
