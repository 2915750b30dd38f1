"""Cheap views for the subscriber throughput benchmark: ``item/{id}`` over ``KEYS`` items held in memory.

A compute costs a dict lookup, so the benchmark measures the subscriber (reading, decoding, mapping,
coalescing, fenced writes, acknowledging), not a database. Every compute returns a new value (a counter),
so every recompute is a real write with its update notification, never the cheaper "unchanged" path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from freshviews.core import PK, Int, On, Params, Registry, View

KEYS = 1000


@dataclass
class Items:
    count: int = KEYS
    computes: int = 0


async def compute_item(ctx: Items, id: int) -> dict[str, int]:
    ctx.computes += 1
    return {"id": id, "computed": ctx.computes}


async def every_item(ctx: Items) -> Iterable[Params]:
    return [{"id": i} for i in range(1, ctx.count + 1)]


ITEMS = Items()


@asynccontextmanager
async def _items() -> AsyncIterator[Items]:
    yield ITEMS


registry: Registry[Items] = Registry(
    [
        View(
            template="item/{id}",
            compute=compute_item,
            enumerate=every_item,
            depends_on=[On("item", id=PK)],
            params={"id": Int(minimum=1, maximum=1_000_000)},
        )
    ],
    context=_items,
)
