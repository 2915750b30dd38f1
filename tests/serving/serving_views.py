"""The serving tests' views: the subscriber tests' toy world (toy_subscriber_views) under two views of its own.

``item/{id}`` has max-age 5 and stale-while-revalidate 60, so the headers are told apart from the defaults, and
no enumeration: the serving tests are about misses, and a warm-up sweep must not fill item keys first. The
world counts computes per key, so a test can tell whether a read made the backend work.
"""

from __future__ import annotations

from collections.abc import Iterable

from toy_subscriber_views import (
    COLOR_DEPENDS,
    COLORS,
    ITEM_DEPENDS,
    World,
    compute_color,
    compute_item,
    enumerate_colors,
    seeded_world,
)

from freshviews.core.views import Choice, Int, Params, Registry, View

__all__ = ["World", "registry", "seeded_world"]


async def enumerate_no_items(ctx: World) -> Iterable[Params]:
    return []


registry: Registry[World] = Registry(
    [
        View(
            template="item/{id}",
            compute=compute_item,
            enumerate=enumerate_no_items,
            depends_on=ITEM_DEPENDS,
            params={"id": Int(minimum=1, maximum=1_000_000)},
            max_age=5,
            stale_while_revalidate=60,
        ),
        View(
            template="color/{color}",
            compute=compute_color,
            enumerate=enumerate_colors,
            depends_on=COLOR_DEPENDS,
            params={"color": Choice(COLORS)},
        ),
    ]
)
