"""The toy worlds the tests' views compute from: cheap sources of truth, so tests exercise the product, not a
database.

**Items and colours** (in memory): :class:`World` holds items in a dict; ``item/{id}`` is one item (MISSING
when it is gone) and ``color/{color}`` lists the ids of the items of one colour. A world counts computes per
key, can hold a compute after it read the source (a :class:`Gate`), and can make a key's compute, or the next
enumerations, raise. Variants:

- :data:`VIEWS` / :data:`registry`: both views, enumerated; ``registry`` serves a module-level world for the
  command-line tests (``freshviews sweep --views tests.support.world:registry``), while in-process tests pass
  their own :class:`World` as the subscriber's context;
- :data:`holed_registry`: the same views with one case left out of ``color/{color}``'s dependencies (the colour
  an item leaves), for the consistency sampler's tests;
- :data:`serving_registry`: ``item/{id}`` with max-age 5 and stale-while-revalidate 60 (headers told apart from
  the defaults) and no enumeration (the serving tests are about misses: a warm-up must not fill item keys);
- :data:`counter_registry`: ``item/{id}`` over :data:`COUNTER`'s ids, each compute a new value (a counter), so
  every recompute is a real write: the subscriber benchmark measures the subscriber, not a source.

**Rows** (in a Redis of their own, for subscriber processes): a row is a hash ``row:<id>`` (``n``, a counter,
and ``w``, the writer) in the Redis named by ``KV_SOURCE_URL``, never the cache's; ``kv/{id}`` renders one row
and embeds its own key, so a reader can tell if it ever got another key's value. ``KV_DELAY_MS`` holds each
compute that long after it read the row (to catch a subscriber mid-batch; ``Source.HELD`` counts them);
``KV_DELAY_ROWS`` (ids, comma separated) limits that to some rows. Subprocesses name it
``--views tests.support.world:kv_registry`` with the repository root on ``PYTHONPATH``.
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio import Redis

from freshviews.core import MISSING, PK, Choice, Int, On, Params, Registry, View
from freshviews.core.events import Change, Operation

COLORS = ("red", "green", "blue")

# --- items and colours ---------------------------------------------------------------------------------------


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


def item_change(
    item_id: int, op: Operation = Operation.UPDATE, *, old_color: str | None = None, **after: Any
) -> Change:
    """A change to item ``item_id``: the values it has after (``color=...``), and its colour before, where the
    writer says them."""
    before = {"color": old_color} if old_color is not None else None
    return Change(entity="item", id=str(item_id), op=op, before=before, after=after or None)


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


async def enumerate_no_items(ctx: World) -> Iterable[Params]:
    return []


async def compute_color(ctx: World, color: str) -> Any:
    ids = sorted(i for i, row in ctx.items.items() if row["color"] == color)
    return await ctx._passed(f"color/{color}", {"color": color, "ids": ids})


async def enumerate_colors(ctx: World) -> Iterable[Params]:
    return [{"color": c} for c in COLORS]


def item_views(*, enumerated: bool = True, max_age: int = 1, stale_while_revalidate: int = 30) -> list[View[World]]:
    """``item/{id}`` and ``color/{color}``; ``enumerated=False`` leaves the items out of a sweep, and the ages are
    ``item/{id}``'s response headers (the colours keep the defaults)."""
    return [
        View(
            template="item/{id}",
            compute=compute_item,
            enumerate=enumerate_items if enumerated else enumerate_no_items,
            depends_on=ITEM_DEPENDS,
            params={"id": Int(minimum=1, maximum=1_000_000)},
            max_age=max_age,
            stale_while_revalidate=stale_while_revalidate,
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


VIEWS = item_views()

#: The world the module-level registry serves (the command-line tests run it in a subprocess).
WORLD = seeded_world()


@asynccontextmanager
async def _world() -> AsyncIterator[World]:
    yield WORLD


registry: Registry[World] = Registry(VIEWS, context=_world)


def colors_after(ctx: World, changes: Sequence[Change]) -> list[Params]:
    """The hole: the colour an item has after a change, never the one it had before (an item moving from red to
    blue leaves ``color/red`` listing it until a sweep)."""
    return [{"color": c.after["color"]} for c in changes if c.after and c.after.get("color") in COLORS]


#: The item views with one case left out of ``color/{color}``'s dependencies (see :func:`colors_after`): what the
#: consistency sampler must find.
HOLED_VIEWS = [
    VIEWS[0],
    View(
        template="color/{color}",
        compute=compute_color,
        enumerate=enumerate_colors,
        depends_on=[On("item", columns=("color",))],
        affected=colors_after,
        params={"color": Choice(COLORS)},
    ),
]
holed_registry: Registry[World] = Registry(HOLED_VIEWS)
serving_registry: Registry[World] = Registry(item_views(enumerated=False, max_age=5, stale_while_revalidate=60))

# --- a counter per item, for the subscriber benchmark --------------------------------------------------------


@dataclass
class Counted:
    """``count`` items whose every compute returns a new value; ``computes`` counts them all."""

    count: int = 1000
    computes: int = 0


async def compute_counted(ctx: Counted, id: int) -> dict[str, int]:
    ctx.computes += 1
    return {"id": id, "computed": ctx.computes}


async def enumerate_counted(ctx: Counted) -> Iterable[Params]:
    return [{"id": i} for i in range(1, ctx.count + 1)]


COUNTER = Counted()


@asynccontextmanager
async def _counter() -> AsyncIterator[Counted]:
    yield COUNTER


counter_registry: Registry[Counted] = Registry(
    [
        View(
            template="item/{id}",
            compute=compute_counted,
            enumerate=enumerate_counted,
            depends_on=ITEM_DEPENDS,
            params={"id": Int(minimum=1, maximum=1_000_000)},
        )
    ],
    context=_counter,
)

# --- rows in a Redis of their own, for subscriber processes --------------------------------------------------

ROWS = 500


@dataclass
class Source:
    redis: Redis
    delay: float = 0.0
    #: Rows whose computes are held (None: all).
    delayed: frozenset[int] | None = None

    #: Counts the computes held so far, so that a test can wait for a subscriber to be inside one.
    HELD = "held"

    @staticmethod
    def row(row_id: int) -> str:
        return f"row:{row_id}"


def render(row_id: int, fields: dict[bytes, bytes]) -> dict[str, Any]:
    return {"key": f"kv/{row_id}", "n": int(fields.get(b"n", b"0")), "w": fields.get(b"w", b"").decode()}


async def seed_rows(redis: Redis) -> None:
    """Every row, written by ``seed``."""
    async with redis.pipeline(transaction=False) as pipe:
        for row_id in range(1, ROWS + 1):
            pipe.hset(Source.row(row_id), mapping={"n": 0, "w": "seed"})
        await pipe.execute()


async def compute_kv(src: Source, id: int) -> Any:
    fields = await src.redis.hgetall(Source.row(id))
    if src.delay and (src.delayed is None or id in src.delayed):
        await src.redis.incr(Source.HELD)
        await asyncio.sleep(src.delay)  # the row is read: a write landing now makes this result stale
    return MISSING if not fields else render(id, cast("dict[bytes, bytes]", fields))


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


kv_registry: Registry[Source] = Registry(
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
