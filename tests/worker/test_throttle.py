"""Per-view minimum intervals: a throttled view is recomputed at most once per interval, nothing it was told is lost,
and the views not named stay fresh."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from redis.asyncio import Redis

from freshviews.core.keys import DATA, Keys
from freshviews.core.settings import ConfigError
from freshviews.publish.publisher import Publisher
from freshviews.worker.throttle import POLL
from tests.support.helpers import BUSY_MARGIN, wait_until
from tests.support.world import COLORS, World, item_change
from tests.worker.helpers import MakeSubscriber, cached, stop


async def _ids(redis: Redis, keys: Keys, color: str) -> list[int]:
    data = (await cached(redis, keys, f"color/{color}")).get(DATA)
    return [] if data is None else list(json.loads(data)["ids"])


def _truth(world: World, color: str) -> list[int]:
    return sorted(i for i, row in world.items.items() if row["color"] == color)


async def _move(world: World, publisher: Publisher, item_id: int, color: str) -> None:
    old = world.items[item_id]["color"]
    world.items[item_id]["color"] = color
    await publisher.publish(item_change(item_id, color=color, old_color=old))


async def test_a_throttled_view_is_recomputed_once_per_interval_while_the_others_keep_up(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    # An interval far longer than the test: every change after the first one is put off, whatever the machine's speed.
    sub = make_subscriber(min_intervals={"color": 3600})
    await sub.start()
    before = world.computes.copy()
    for n in range(6):
        await _move(world, publisher, 1, COLORS[n % 3])
        await sub.consumer.drain()
        # item/1 is not throttled: fresh after every batch.
        assert json.loads((await cached(redis, keys, "item/1"))[DATA])["color"] == COLORS[n % 3]
    computed = world.computes - before
    assert computed["item/1"] == 6
    # The first batch recomputed the colours it named (at once: nothing computed them in this process before);
    # the other five batches only put them off.
    assert all(computed[f"color/{c}"] <= 1 for c in COLORS)
    due = {k.decode() for k in await redis.zrange(keys.due, 0, -1)}
    assert due == {f"color/{c}" for c in COLORS}
    assert [await _ids(redis, keys, c) for c in COLORS] != [_truth(world, c) for c in COLORS]  # the put-off: behind
    # Their turn (here every key in the set, as burst mode does at its end): one recompute each, and all exact.
    assert await sub.throttle.run_due(float("inf")) == 3
    assert await redis.zcard(keys.due) == 0
    for color in COLORS:
        assert await _ids(redis, keys, color) == _truth(world, color)
    assert all((world.computes - before)[f"color/{c}"] <= 2 for c in COLORS)


async def test_a_put_off_key_is_recomputed_when_its_interval_ends(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    interval = 0.3
    sub = make_subscriber(min_intervals={"color": interval})
    await sub.start()
    await _move(world, publisher, 1, "green")
    await sub.consumer.drain()  # computed now
    await _move(world, publisher, 1, "blue")
    outcome_started = time.monotonic()
    await sub.consumer.drain()  # put off: computed less than the interval ago
    assert await redis.zcard(keys.due) > 0
    recomputed = 0
    while await redis.zcard(keys.due):
        recomputed += await sub.throttle.step()
    waited = time.monotonic() - outcome_started
    assert recomputed >= 1
    for color in COLORS:
        assert await _ids(redis, keys, color) == _truth(world, color)
    # The promise: at most the interval, plus the compute (the due loop sleeps until the earliest due time).
    assert waited <= interval + BUSY_MARGIN, f"put off for {waited:.2f}s"


async def test_a_change_during_a_due_recompute_is_recomputed_again(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    sub = make_subscriber(min_intervals={"color": 3600})
    await sub.start()
    await _move(world, publisher, 1, "blue")  # from green
    await sub.consumer.drain()  # color/green and color/blue computed
    await _move(world, publisher, 1, "green")
    await sub.consumer.drain()  # both put off
    gate = world.hold("color/blue")
    due = asyncio.create_task(sub.throttle.run_due(float("inf")))
    await asyncio.wait_for(gate.reached.wait(), timeout=5)
    # color/blue is being recomputed from a read that does not have this move yet.
    await _move(world, publisher, 3, "blue")  # from red
    await sub.consumer.drain()
    gate.release.set()
    await due
    assert await _ids(redis, keys, "blue") != _truth(world, "blue")  # the held compute wrote what it read
    assert {k.decode() for k in await redis.zrange(keys.due, 0, -1)} >= {"color/blue"}  # and it is due again
    await sub.throttle.run_due(float("inf"))
    for color in COLORS:
        assert await _ids(redis, keys, color) == _truth(world, color)


async def test_a_key_claimed_by_a_subscriber_that_died_is_taken_over_when_its_lease_ends(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber
) -> None:
    sub = make_subscriber(min_intervals={"color": 3600})
    await sub.start()
    world.items[1]["color"] = "red"  # a change whose recompute the dead subscriber had claimed
    now = time.time()
    await redis.zadd(keys.due_claimed, {"color/red": int((now + 30) * 1000), "color/green": int((now - 1) * 1000)})
    assert await sub.throttle.run_due(now) == 1  # the lease that ended, not the one still running
    assert await _ids(redis, keys, "green") == _truth(world, "green")
    assert [k.decode() for k in await redis.zrange(keys.due_claimed, 0, -1)] == ["color/red"]
    assert await sub.throttle.is_due("color/red")


async def test_burst_mode_leaves_nothing_due(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    sub = make_subscriber(min_intervals={"color": 3600})
    await sub.start()
    for n in range(4):
        await _move(world, publisher, 1 + n % 2, COLORS[n % 3])
        await sub.drain()
    assert await redis.zcard(keys.due) == 0
    for color in COLORS:
        assert await _ids(redis, keys, color) == _truth(world, color)


async def test_the_running_subscriber_applies_put_off_keys_on_its_own(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    interval = 0.2
    sub = make_subscriber(min_intervals={"color": interval}, shutdown_timeout=2)
    task = asyncio.create_task(sub.run())
    try:
        await wait_until(lambda: _ids(redis, keys, "red"), timeout=10, message="not warmed")
        for n in range(10):
            await _move(world, publisher, 1 + n % 3, COLORS[n % 3])

        async def exact() -> bool:
            return all([await _ids(redis, keys, c) == _truth(world, c) for c in COLORS])

        # The interval, one compute each, and the margin for a loaded machine.
        await wait_until(exact, timeout=interval + BUSY_MARGIN + POLL, message="the put-off keys were not applied")
    finally:
        await stop(sub, task, budget=2)


def test_min_intervals_name_views(make_subscriber: MakeSubscriber) -> None:
    with pytest.raises(ConfigError, match="SUBSCRIBER_MIN_INTERVALS names no view 'colour'"):
        make_subscriber(min_intervals={"colour": 1})
