"""Helpers shared by the tests: free ports, waiting on a condition with a deadline instead of sleeping, and reading
the changes writes left."""

from __future__ import annotations

import asyncio
import inspect
import socket
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from freshviews.core import Change, Keys, RedisSettings
from freshviews.core.events import decode
from freshviews.outbox import Relay
from freshviews.scoreboard.models import OUTBOX


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_until(
    predicate: Callable[[], Awaitable[bool]] | Callable[[], bool],
    # A plain timeout argument rather than asyncio.timeout(): on expiry the caller wants an AssertionError
    # carrying its message, not a TimeoutError from wherever the predicate happened to be.
    timeout: float,  # noqa: ASYNC109
    interval: float = 0.02,
    message: str = "",
) -> None:
    """Poll ``predicate`` (sync or async) until true; raise AssertionError(message) after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


class Log:
    """The changes writes left, in order, as the subscriber will read them: every outbox row is relayed first (this
    relay and the app's take turns on the SQLite file), then the change log is read from where it was left."""

    def __init__(self, engine: AsyncEngine, redis: Redis, redis_url: str) -> None:
        self.relay = Relay(engine, redis, RedisSettings(redis_url=redis_url), table=OUTBOX)
        self.redis = redis
        self.last = "0-0"

    async def new(self) -> list[Change]:
        await self.relay.drain()
        entries = await self.redis.xrange(Keys().changes, min=f"({self.last}")
        if entries:
            self.last = entries[-1][0].decode()
        return [decode(fields) for _, fields in entries]
