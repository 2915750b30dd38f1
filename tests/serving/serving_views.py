"""A toy source of truth for the serving tests: items in a dict and two views over them.

``item/{id}`` is one item (MISSING when it is gone; max-age 5, stale-while-revalidate 60 so the headers are
told apart from the defaults); ``color/{color}`` lists the ids of the items of one colour. The world counts
computes per key, so a test can tell whether a read made the backend work.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from publisher.events import Change
from subscriber.registry import MISSING, Choice, Int, Params, Registry, View

COLORS = ("red", "green", "blue")


@dataclass
class World:
    items: dict[int, dict[str, Any]] = field(default_factory=dict)
    computes: Counter[str] = field(default_factory=Counter)


def seeded_world(n: int = 5) -> World:
    return World(items={i: {"id": i, "name": f"item {i}", "color": COLORS[i % 3]} for i in range(1, n + 1)})


async def compute_item(ctx: World, id: int) -> Any:
    ctx.computes[f"item/{id}"] += 1
    row = ctx.items.get(id)
    return MISSING if row is None else copy.deepcopy(row)


def affected_item(ctx: World, change: Change) -> Iterable[Params]:
    return [{"id": int(change.id)}]


async def enumerate_items(ctx: World) -> Iterable[Params]:
    # None on purpose: the serving tests are about misses, and a warm-up sweep must not fill item keys first.
    return []


async def compute_color(ctx: World, color: str) -> Any:
    ctx.computes[f"color/{color}"] += 1
    return {"color": color, "ids": sorted(i for i, row in ctx.items.items() if row["color"] == color)}


def affected_color(ctx: World, change: Change) -> Iterable[Params]:
    return [{"color": c} for c in COLORS]


async def enumerate_colors(ctx: World) -> Iterable[Params]:
    return [{"color": c} for c in COLORS]


registry: Registry[World] = Registry(
    [
        View(
            template="item/{id}",
            compute=compute_item,
            affected=affected_item,
            enumerate=enumerate_items,
            entities=frozenset({"item"}),
            params={"id": Int(minimum=1, maximum=1_000_000)},
            max_age=5,
            stale_while_revalidate=60,
        ),
        View(
            template="color/{color}",
            compute=compute_color,
            affected=affected_color,
            enumerate=enumerate_colors,
            entities=frozenset({"item"}),
            params={"color": Choice(COLORS)},
        ),
    ]
)
