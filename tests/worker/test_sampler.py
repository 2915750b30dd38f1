"""The consistency sampler: it finds a hole in a view's dependencies within a bound set by the sample rate, it finds
nothing where the dependencies are right, and a compute that fails is skipped and counted.

The bound: half the samples walk the catalogue of cached keys in turn, so each of the K cached keys is sampled
within 2K samples of the moment it went stale (the other half only add samples of busy views); at a rate of r
samples per second that is 2K / r seconds, plus the classification of the mismatch, which waits the writers' grace
(``HOOK_GRACE``, 1 s) for changes still on their way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time

import pytest
from redis.asyncio import Redis

from freshviews.core import PK, Int, On, Params, Registry, View
from freshviews.core.events import Change, Operation
from freshviews.core.keys import DATA, Keys
from freshviews.publish.publisher import Publisher
from freshviews.worker.check import check
from freshviews.worker.freshness import nines
from freshviews.worker.picks import KeyPicker
from freshviews.worker.sampler import HOOK_GRACE
from freshviews.worker.settings import SubscriberSettings
from freshviews.worker.store import CacheStore, PendingWrite
from tests.support.helpers import BUSY_MARGIN, wait_until
from tests.support.metrics import sample
from tests.support.world import COLORS, World, holed_registry, item_change
from tests.worker.helpers import MakeSubscriber, cached, stop

SAMPLES = "freshviews_sampler_samples_total"


def _count(view: str, result: str) -> float:
    return sample(SAMPLES, {"view": view, "result": result})


def _unexplained() -> float:
    return sum(_count(view, "unexplained") for view in ("item", "color"))


async def test_a_hole_in_a_declaration_is_found_within_two_passes_and_named(
    redis: Redis,
    redis_url: str,
    keys: Keys,
    world: World,
    make_subscriber: MakeSubscriber,
    publisher: Publisher,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rate = 40.0
    sub = make_subscriber(views=holed_registry, sample_rate=rate)
    await sub.start()  # warmed before the loops start, so that the first pick finds every key cached
    task = asyncio.create_task(sub.run())
    await wait_until(lambda: sub.sampler.samples > 0, timeout=5, message="the sampler never sampled")
    k = len(world.view_keys())
    before = _count("color", "unexplained")

    # Item 3 moves from red to blue: the declaration names blue, never red, which keeps listing it.
    with caplog.at_level(logging.WARNING, logger="freshviews.worker.sampler"):
        world.items[3]["color"] = "blue"
        await publisher.publish(item_change(3, old_color="red", color="blue"))
        stale_from = sub.sampler.picks
        started = time.monotonic()
        bound = 2 * k / rate + HOOK_GRACE
        await wait_until(
            lambda: _count("color", "unexplained") > before,
            timeout=bound + BUSY_MARGIN,
            message=lambda: f"no unexplained mismatch after {sub.sampler.picks - stale_from} samples",
        )
        elapsed = time.monotonic() - started
        found = sub.sampler.tallies["color"].last_unexplained
        assert found is not None
        assert found["key"] == "color/red"
        # The pick that sampled color/red, within two passes of the K cached keys; judging it took the grace.
        assert found["pick"] - stale_from <= 2 * k, "found later than two passes of the cached keys"
        print(
            f"hole sampled {found['pick'] - stale_from} samples after it opened, found in {elapsed:.2f}s "
            f"(bound {2 * k} samples, {bound:.2f}s)"
        )

        # Repaired at once, through the fence.
        assert 3 not in json.loads((await cached(redis, keys, "color/red"))[DATA])["ids"]
        # Named in the log, once, with the stale value's age and the latest change to the view's entities.
        warnings = [r.getMessage() for r in caplog.records if "no change on its way explains it" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert "color/red" in warnings[0], warnings[0]
        assert "update item 3" in warnings[0], warnings[0]
        assert "written" in warnings[0]
    assert sample("freshviews_sampler_stale_age_seconds_count", {"view": "color"}) >= 1
    assert _count("item", "unexplained") == 0

    # `freshviews check` shows it, per view.
    settings = SubscriberSettings(redis_url=redis_url, metrics_port=0)
    await wait_until(lambda: _shows_unexplained(redis, settings), timeout=5, message="check does not show it")
    await stop(sub, task, budget=5)


async def _shows_unexplained(redis: Redis, settings: SubscriberSettings) -> bool:
    health = await check(redis, settings)
    views = (health.details.get("sampler") or {}).get("views", {})
    color = views.get("color", {})
    return bool(color.get("unexplained", 0) >= 1 and color.get("last_unexplained", {}).get("key") == "color/red")


async def test_with_right_dependencies_10000_random_writes_leave_no_unexplained_mismatch(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    sub = make_subscriber(sample_rate=500.0)
    await sub.start()  # warmed before the loops start, so that the first pick finds every key cached
    task = asyncio.create_task(sub.run())
    await wait_until(lambda: sub.sampler.samples > 0, timeout=5, message="the sampler never sampled")
    before = _unexplained()
    explained_before = _count("item", "explained") + _count("color", "explained")
    rng = random.Random(15)
    for n in range(10_000):
        item_id = rng.randint(1, 30)
        row = world.items.get(item_id)
        roll = rng.random()
        # Written to the source, then published: as a backend without an outbox does after its commit.
        if row is None:
            world.items[item_id] = {"id": item_id, "name": f"item {item_id}", "color": rng.choice(COLORS)}
            change = item_change(item_id, Operation.CREATE, **world.items[item_id])
        elif roll < 0.1:
            del world.items[item_id]
            change = item_change(item_id, Operation.DELETE, old_color=row["color"])
        elif roll < 0.6:
            old = row["color"]
            row["color"] = rng.choice(COLORS)
            change = item_change(item_id, old_color=old, color=row["color"])
        else:
            row["name"] = f"item {item_id} #{n}"
            change = item_change(item_id, color=row["color"], name=row["name"])
        await publisher.publish(change)
        if n % 10 == 0:
            # About 1,000 writes a second: writers, subscriber and sampler share one loop here.
            await asyncio.sleep(0.01)
    during = sub.sampler.picks
    # Then two full passes over the quiet cache.
    k = len(world.view_keys())
    await wait_until(lambda: sub.sampler.picks >= during + 2 * k and not sub.sampler.undecided, timeout=30)
    await stop(sub, task, budget=10)
    explained = _count("item", "explained") + _count("color", "explained") - explained_before
    print(f"{sub.sampler.samples} samples ({during} during the writes), {explained:.0f} explained mismatches")
    assert _unexplained() == before
    assert during > 300, "too few samples during the writes to show anything"
    assert explained > 0, "no sample ever met a change on its way: the writes did not overlap the samples"


async def test_a_failing_compute_is_skipped_and_counted_and_the_loop_samples_on(
    redis: Redis,
    keys: Keys,
    world: World,
    make_subscriber: MakeSubscriber,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sub = make_subscriber(sample_rate=200.0)
    await sub.start()
    with caplog.at_level(logging.WARNING, logger="freshviews.worker.sampler"):
        task = asyncio.create_task(sub.run())
        await wait_until(lambda: sub.sampler.samples > 0, timeout=5, message="the sampler never sampled")
        failed = _count("item", "failed")
        fresh = _count("color", "fresh")
        world.failing.add("item/2")
        await wait_until(lambda: _count("item", "failed") >= failed + 3, timeout=10)
        # It samples on: the other keys keep being compared.
        await wait_until(lambda: _count("color", "fresh") >= fresh + 5, timeout=10)
        assert not task.done()
    await stop(sub, task, budget=5)
    warnings = [r.getMessage() for r in caplog.records if "computing item/2 failed" in r.getMessage()]
    assert len(warnings) == 1, "one warning per minute at most"
    assert sub.sampler.tallies["item"].totals["unexplained"] == 0


def test_nines_are_capped_by_what_the_window_can_tell() -> None:
    assert nines(999, 1000) == 3.0
    assert nines(1000, 1000) == 3.0  # no stale sample in 1,000: at least 3 nines, not infinity
    assert nines(9990, 10_000) == 3.0
    assert nines(0, 10) == 0.0
    assert nines(0, 0) == 0.0


async def _other(ctx: object, id: int) -> dict[str, int]:
    return {"id": id}


async def _no_keys(ctx: object) -> list[Params]:
    return []


async def test_half_the_picks_walk_every_key_and_the_other_half_go_to_busy_views(redis: Redis, keys: Keys) -> None:
    views = Registry(
        [
            View("item/{id}", compute=_other, enumerate=_no_keys, depends_on=[On("item", id=PK)], params={"id": Int()}),
            View(
                "other/{id}", compute=_other, enumerate=_no_keys, depends_on=[On("other", id=PK)], params={"id": Int()}
            ),
        ]
    )
    store = CacheStore(redis, keys)
    cached = [f"{view}/{i}" for view in ("item", "other") for i in range(1, 21)]
    await store.write([PendingWrite(key, 1, b"{}") for key in cached])
    picker = KeyPicker(store, views, seed=1)
    picker.on_changes([Change(entity="other", id="3", op=Operation.UPDATE)])
    picks = [await picker.pick() for _ in range(2 * len(cached))]
    # Every other pick goes to the busy view; the rest walk the catalogue: all K keys within 2K picks.
    assert all(str(key).startswith("other/") for key in picks[1::2]), picks
    assert set(picks[0::2]) == set(cached)
