"""A cheap source of truth for fault tests: rows in a Redis database of their own, read by one view.

Fault scenarios need thousands of writes in seconds and a subscriber process they can kill; the scoreboard's
SQL writes are too slow for that. Here a "row" is a hash ``row:<id>`` (fields ``n``, a counter, and ``w``, the
writer) in the Redis named by ``KV_SOURCE_URL``, which is never the cache's. ``kv/{id}`` renders
one row and embeds its own key, so a reader can tell if it ever got another key's value. ``KV_DELAY_MS`` holds
each compute that long after it read the row (to catch a subscriber mid-batch); ``KV_DELAY_ROWS`` (ids, comma
separated) limits that to some rows.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from freshviews.core import MISSING, PK, Int, On, Params, Registry, View

ROWS = 500


@dataclass
class Source:
    redis: Redis
    delay: float = 0.0
    #: Rows whose computes are held (None: all).
    delayed: frozenset[int] | None = None

    @staticmethod
    def row(row_id: int) -> str:
        return f"row:{row_id}"


def render(row_id: int, fields: dict[bytes, bytes]) -> dict[str, Any]:
    return {"key": f"kv/{row_id}", "n": int(fields.get(b"n", b"0")), "w": fields.get(b"w", b"").decode()}


async def compute_kv(src: Source, id: int) -> Any:
    fields = await src.redis.hgetall(Source.row(id))
    if src.delay and (src.delayed is None or id in src.delayed):
        await asyncio.sleep(src.delay)  # the row is read: a write landing now makes this result stale
    return MISSING if not fields else render(id, fields)


async def enumerate_kv(src: Source) -> Iterable[Params]:
    return [{"id": i} for i in range(1, ROWS + 1)]


@asynccontextmanager
async def _source() -> AsyncIterator[Source]:
    redis = Redis.from_url(os.environ["KV_SOURCE_URL"])
    try:
        rows = os.environ.get("KV_DELAY_ROWS")
        delayed = frozenset(int(i) for i in rows.split(",")) if rows else None
        yield Source(redis, delay=float(os.environ.get("KV_DELAY_MS", "0")) / 1000, delayed=delayed)
    finally:
        await redis.aclose()


registry: Registry[Source] = Registry(
    [
        View(
            template="kv/{id}",
            compute=compute_kv,
            enumerate=enumerate_kv,
            depends_on=[On("row", id=PK)],
            params={"id": Int(minimum=1, maximum=ROWS)},
        )
    ],
    context=_source,
)
