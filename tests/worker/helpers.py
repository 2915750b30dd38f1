"""Small helpers shared by the subscriber tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import cast

from redis.asyncio import Redis

from freshviews.core.keys import Keys
from freshviews.worker.service import Subscriber
from tests.support.world import World

#: Builds a Subscriber on the test Redis (the ``make_subscriber`` fixture).
MakeSubscriber = Callable[..., Subscriber[World]]


async def cached(redis: Redis, keys: Keys, view_key: str) -> dict[bytes, bytes]:
    return cast("dict[bytes, bytes]", await redis.hgetall(keys.value(view_key)))


async def stop(sub: Subscriber[World], task: asyncio.Task[None], budget: float) -> float:
    """Stop a running subscriber and return how long its run() took to return (failing past ``budget`` + 2 s)."""
    started = time.monotonic()
    sub.stop()
    await asyncio.wait_for(task, timeout=budget + 2)
    return time.monotonic() - started
