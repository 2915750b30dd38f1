"""A toy source of truth for the subscriber tests: items in a dict, and two views over them.

``item/{id}`` is one item (MISSING when it is gone); ``color/{color}`` lists the ids of the items of one colour.
Each :class:`World` counts computes per key, can hold a compute after it read the source (a gate), and can make
a key's compute, or the next enumerations, raise. The module-level ``registry`` serves a module-level world, for
the CLI tests (``python -m subscriber sweep --once --views toy_subscriber_views:registry``); the in-process tests
pass their own :class:`World` as the subscriber's context instead.
"""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from freshviews.core import MISSING, PK, Choice, Int, On, Params, Registry, View

COLORS = ("red", "green", "blue")


@dataclass
class Gate:
    """Holds one compute: ``reached`` is set once the compute has read the source, and it waits for ``release``."""

    reached: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class World:
    items: dict[int, dict[str, Any]] = field(default_factory=dict)
    computes: Counter[str] = field(default_factory=Counter)
    #: key -> gate for its next compute (used once).
    gates: dict[str, Gate] = field(default_factory=dict)
    #: keys whose compute raises.
    failing: set[str] = field(default_factory=set)
    #: how many of the next enumerations of the items raise (the source of truth not ready yet).
    enumerate_failures: int = 0

    def hold(self, key: str) -> Gate:
        gate = Gate()
        self.gates[key] = gate
        return gate

    async def _passed(self, key: str, value: Any) -> Any:
        self.computes[key] += 1
        if key in self.failing:
            raise RuntimeError(f"source unavailable for {key}")
        gate = self.gates.pop(key, None)
        if gate is not None:
            gate.reached.set()
            await gate.release.wait()
        return value

    def view_keys(self) -> set[str]:
        return {f"item/{i}" for i in self.items} | {f"color/{c}" for c in COLORS}


def seeded_world(n: int = 5) -> World:
    return World(items={i: {"id": i, "name": f"item {i}", "color": COLORS[i % 3]} for i in range(1, n + 1)})


async def compute_item(ctx: World, id: int) -> Any:
    row = ctx.items.get(id)
    value = MISSING if row is None else copy.deepcopy(row)  # read the source now, before any gate
    return await ctx._passed(f"item/{id}", value)


#: An item change names its own key, and the colours it had before and has after.
ITEM_DEPENDS = [On("item", id=PK)]
COLOR_DEPENDS = [On("item", color="color")]


async def enumerate_items(ctx: World) -> Iterable[Params]:
    if ctx.enumerate_failures > 0:
        ctx.enumerate_failures -= 1
        raise ConnectionRefusedError("the items table is not there yet")
    return [{"id": i} for i in ctx.items]


async def compute_color(ctx: World, color: str) -> Any:
    ids = sorted(i for i, row in ctx.items.items() if row["color"] == color)
    return await ctx._passed(f"color/{color}", {"color": color, "ids": ids})


async def enumerate_colors(ctx: World) -> Iterable[Params]:
    return [{"color": c} for c in COLORS]


VIEWS: list[View[World]] = [
    View(
        template="item/{id}",
        compute=compute_item,
        enumerate=enumerate_items,
        depends_on=ITEM_DEPENDS,
        params={"id": Int(minimum=1, maximum=1_000_000)},
    ),
    View(
        template="color/{color}",
        compute=compute_color,
        enumerate=enumerate_colors,
        # A change that does not say its colour (before or after) affects every colour.
        depends_on=COLOR_DEPENDS,
        params={"color": Choice(COLORS)},
    ),
]

#: The world the module-level registry serves (the CLI tests run it in a subprocess).
WORLD = seeded_world()


@asynccontextmanager
async def _world() -> AsyncIterator[World]:
    yield WORLD


registry: Registry[World] = Registry(VIEWS, context=_world)
