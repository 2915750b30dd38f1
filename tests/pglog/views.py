"""The views the log source's tests serve, read from a PostgreSQL table (the source of truth):

``items(id integer primary key, color text, name text)``; ``item/{id}`` (the row) and ``color/{color}`` (the
ids of that colour). The database is ``FRESHVIEWS_PGLOG_URL`` (read when the context opens, as a subscriber
process does); ``computes`` counts the recomputes of each key.
"""

from __future__ import annotations

import collections
import os
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from freshviews.core import MISSING, PK, Choice, Int, On, Registry, View

COLORS = ("red", "green", "blue")
SCHEMA = "CREATE TABLE items (id integer PRIMARY KEY, color text NOT NULL, name text);"


@dataclass
class Source:
    pool: asyncpg.Pool
    computes: collections.Counter[str] = field(default_factory=collections.Counter)


async def compute_item(ctx: Source, id: int) -> Any:
    ctx.computes[f"item/{id}"] += 1
    row = await ctx.pool.fetchrow("SELECT id, color, name FROM items WHERE id = $1", id)
    return MISSING if row is None else dict(row)


async def enumerate_items(ctx: Source) -> Iterable[dict[str, Any]]:
    return [{"id": row["id"]} for row in await ctx.pool.fetch("SELECT id FROM items")]


async def compute_color(ctx: Source, color: str) -> Any:
    ctx.computes[f"color/{color}"] += 1
    rows = await ctx.pool.fetch("SELECT id FROM items WHERE color = $1 ORDER BY id", color)
    return {"color": color, "ids": [row["id"] for row in rows]}


async def enumerate_colors(ctx: Source) -> Iterable[dict[str, Any]]:
    return [{"color": color} for color in COLORS]


VIEWS = [
    View(
        "item/{id}",
        compute=compute_item,
        enumerate=enumerate_items,
        depends_on=[On("items", id=PK)],
        params={"id": Int(minimum=1, maximum=10_000_000)},
    ),
    View(
        "color/{color}",
        compute=compute_color,
        enumerate=enumerate_colors,
        depends_on=[On("items", color="color")],
        params={"color": Choice(COLORS)},
    ),
]


@asynccontextmanager
async def source(url: str | None = None) -> AsyncIterator[Source]:
    pool = await asyncpg.create_pool(url or os.environ["FRESHVIEWS_PGLOG_URL"], min_size=1, max_size=4)
    try:
        yield Source(pool)
    finally:
        await pool.close()


registry: Registry[Source] = Registry(VIEWS, context=source)
