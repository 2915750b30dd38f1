"""The refresh loop: keys readers found missing are validated, recomputed once each, and acknowledged."""

from __future__ import annotations

import asyncio
import json

from redis.asyncio import Redis

from freshviews.core.keys import DATA, REFRESH_KEY, Keys
from tests.support.helpers import wait_until
from tests.support.metrics import sample
from tests.support.world import World
from tests.worker.helpers import MakeSubscriber, cached


def _requested(outcome: str) -> float:
    return sample("freshviews_refresh_requests_total", {"outcome": outcome})


async def _ask(redis: Redis, keys: Keys, *view_keys: str | bytes) -> None:
    for key in view_keys:
        await redis.xadd(keys.refresh, {REFRESH_KEY: key})


async def _pending(redis: Redis, keys: Keys, group: str = "subscribers") -> int:
    return int((await redis.xpending(keys.refresh, group))["pending"])


async def test_requested_keys_are_recomputed_once_each_and_acknowledged(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber
) -> None:
    subscriber = make_subscriber()
    await subscriber.start(warm=False)
    await _ask(redis, keys, "item/1", "item/1", "color/red", "item/1")
    before = _requested("recomputed")
    outcome = await subscriber.refresher.drain()
    assert (outcome.entries, outcome.recomputed, outcome.invalid) == (4, 2, 0)
    assert world.computes == {"item/1": 1, "color/red": 1}
    assert json.loads((await cached(redis, keys, "item/1"))[DATA])["name"] == "item 1"
    assert await _pending(redis, keys) == 0
    assert _requested("recomputed") - before == 2


async def test_bad_requests_are_dropped_with_a_metric_and_do_not_stop_good_ones(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber
) -> None:
    subscriber = make_subscriber()
    await subscriber.start(warm=False)
    before = _requested("invalid")
    await _ask(redis, keys, "nope/1", "item/x", "item/1}", b"\xff\xfe", "item/" + "9" * 10_000, "item/2")
    await redis.xadd(keys.refresh, {"other": "field"})
    outcome = await subscriber.refresher.drain()
    assert (outcome.entries, outcome.invalid, outcome.recomputed) == (7, 6, 1)
    assert world.computes == {"item/2": 1}
    assert _requested("invalid") - before == 6
    assert await _pending(redis, keys) == 0
    assert await redis.keys(f"{keys.prefix}:v:*") == [keys.value("item/2").encode()]


async def test_a_key_cached_meanwhile_is_not_recomputed(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber
) -> None:
    subscriber = make_subscriber()
    await subscriber.start(warm=False)
    await _ask(redis, keys, "item/3")
    await subscriber.refresher.drain()
    await _ask(redis, keys, "item/3")  # a second reader missed it just before it landed
    outcome = await subscriber.refresher.drain()
    assert (outcome.cached, outcome.recomputed) == (1, 0)
    assert world.computes["item/3"] == 1


async def test_a_failing_recompute_is_acknowledged_and_logged(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, caplog: object
) -> None:
    subscriber = make_subscriber()
    await subscriber.start(warm=False)
    world.failing.add("item/4")
    await _ask(redis, keys, "item/4")
    outcome = await subscriber.refresher.drain()
    assert outcome.failed == 1
    assert await _pending(redis, keys) == 0
    assert "refresh of 'item/4' failed" in caplog.text  # type: ignore[attr-defined]


async def test_the_running_subscriber_serves_requests_and_survives_a_lost_group(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber
) -> None:
    subscriber = make_subscriber(block_ms=50)
    task = asyncio.create_task(subscriber.run())
    try:
        first = await redis.xadd(keys.refresh, {REFRESH_KEY: "item/5"})
        await wait_until(lambda: _handled(redis, keys, first), 5, message="the refresh loop did not run")
        # The stream and its group vanish (Redis restarted empty, or an operator deleted it): the loop recreates
        # the group and the next request is served.
        await redis.delete(keys.refresh)
        world.items[9] = {"id": 9, "name": "item 9", "color": "red"}  # unknown to the warm-up sweep
        second = await redis.xadd(keys.refresh, {REFRESH_KEY: "item/9"})
        await wait_until(lambda: _handled(redis, keys, second), 5, message="requests after the loss were not served")
        assert world.computes["item/9"] == 1
        assert json.loads((await cached(redis, keys, "item/9"))[DATA])["name"] == "item 9"
    finally:
        subscriber.stop()
        await asyncio.wait_for(task, 10)


async def _handled(redis: Redis, keys: Keys, entry_id: bytes | str) -> bool:
    """Whether the group has read ``entry_id`` and acknowledged everything it read."""
    try:
        (group,) = await redis.xinfo_groups(keys.refresh)
    except Exception:
        return False  # no stream or no group (yet)
    return bool(group["last-delivered-id"] == entry_id and group["pending"] == 0)
