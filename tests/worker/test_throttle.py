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
from tests.support.helpers import BUSY_MARGIN, wait_until
from tests.support.world import COLORS, World, item_change
from tests.worker.helpers import MakeSubscriber, cached, stop


async def _ids(redis: Redis, keys: Keys, color: str) -> list[int]:
    data = (await cached(redis, keys, f"color/{color}")).get(DATA)
    return [] if data is None else list(json.loads(data)["ids"])


def _truth(world: World, color: str) -> list[int]:
    return sorted(i for i, row in world.items.items() if row["color"] == color)


async def _exact(redis: Redis, keys: Keys, world: World) -> bool:
    return all([await _ids(redis, keys, c) == _truth(world, c) for c in COLORS])


async def _move(world: World, publisher: Publisher, item_id: int, color: str) -> None:
    old = world.items[item_id]["color"]
    world.items[item_id]["color"] = color
    await publisher.publish(item_change(item_id, color=color, old_color=old))


async def _due(redis: Redis, keys: Keys) -> set[str]:
    return {k.decode() for k in await redis.zrange(keys.due, 0, -1)}


async def test_a_throttled_view_is_recomputed_once_per_interval_while_the_others_keep_up(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    # An interval far longer than the test: every change after the first one is put off, whatever the machine's speed.
    sub = make_subscriber(min_intervals={"color": 3600})
    await sub.start()
    before = world.computes.copy()
    for n in range(6):
        await _move(world, publisher, 1, COLORS[n % 3])  # item 1 is green at first: red, green, blue, red, ...
        await sub.consumer.drain()
        # item/1 is not throttled: fresh after every batch.
        assert json.loads((await cached(redis, keys, "item/1"))[DATA])["color"] == COLORS[n % 3]
    computed = world.computes - before
    assert computed["item/1"] == 6
    # Each colour was recomputed once, by the first batch that named it (nothing had computed it in this process
    # before); every later batch only put it off.
    assert [computed[f"color/{c}"] for c in COLORS] == [1, 1, 1]
    assert await _due(redis, keys) == {f"color/{c}" for c in COLORS}
    assert not await _exact(redis, keys, world)  # the ones put off are behind
    # Their turn (here every key in the set, as burst mode does at its end): one recompute each, and all exact.
    assert await sub.throttle.run_due(everything=True) == 3
    assert await redis.zcard(keys.due) == await redis.zcard(keys.due_claimed) == 0
    assert await _exact(redis, keys, world)
    assert [(world.computes - before)[f"color/{c}"] for c in COLORS] == [2, 2, 2]


async def test_a_put_off_key_is_recomputed_when_its_interval_ends(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    interval = 0.3
    sub = make_subscriber(min_intervals={"color": interval})
    await sub.start()
    await _move(world, publisher, 1, "blue")
    await sub.consumer.drain()  # computed now
    await _move(world, publisher, 1, "red")
    put_off = time.monotonic()
    await sub.consumer.drain()  # put off: computed less than the interval ago
    assert await redis.zcard(keys.due) > 0
    recomputed = 0
    while await redis.zcard(keys.due):
        recomputed += await sub.throttle.step()
    waited = time.monotonic() - put_off
    assert recomputed >= 1
    assert await _exact(redis, keys, world)
    # The promise: the interval plus one compute (the due loop sleeps until the earliest due time).
    assert waited <= interval + BUSY_MARGIN, f"put off for {waited:.2f}s"


async def test_a_change_at_the_end_of_an_interval_does_not_recompute_a_key_already_due(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    interval = 0.3
    sub = make_subscriber(min_intervals={"color": interval})
    await sub.start()
    await _move(world, publisher, 1, "blue")
    await sub.consumer.drain()  # color/green and color/blue computed
    await _move(world, publisher, 1, "green")
    await sub.consumer.drain()  # both put off
    before = world.computes.copy()
    await asyncio.sleep(interval)  # the interval is over; the due loop (not running here) has not claimed them yet
    await _move(world, publisher, 1, "blue")
    await sub.consumer.drain()
    assert (world.computes - before)["color/green"] == 0  # left to the due loop, which has it already
    assert await sub.throttle.run_due() == 2
    assert (world.computes - before)["color/green"] == 1
    assert await _exact(redis, keys, world)


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
    before = world.computes.copy()
    due = asyncio.create_task(sub.throttle.run_due(everything=True))
    await asyncio.wait_for(gate.reached.wait(), timeout=5)
    # color/blue is being recomputed from a read that does not have this move yet.
    await _move(world, publisher, 3, "blue")  # from red
    await sub.consumer.drain()
    assert "color/blue" in await _due(redis, keys)  # put off again, behind the recompute in flight
    gate.release.set()
    await due
    # The held compute wrote what it read; the key was due again, and its next round recomputed it.
    assert (world.computes - before)["color/blue"] == 2
    assert await _exact(redis, keys, world)


async def test_a_key_claimed_by_one_subscriber_is_not_taken_by_another_until_that_claim_ends(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    one = make_subscriber(consumer="one", min_intervals={"color": 3600})
    two = make_subscriber(consumer="two", min_intervals={"color": 3600})
    await one.start()
    await two.start()
    await _move(world, publisher, 1, "blue")
    await two.consumer.drain()  # two computed color/green and color/blue
    await _move(world, publisher, 1, "green")
    await two.consumer.drain()  # and put them off
    gate = world.hold("color/green")
    claimed = asyncio.create_task(one.throttle.run_due(everything=True))  # one claims both
    await asyncio.wait_for(gate.reached.wait(), timeout=5)
    await _move(world, publisher, 3, "green")  # from red: color/green again, while one computes it from before
    await two.consumer.drain()  # two puts color/green off once more
    assert "color/green" in await _due(redis, keys)
    assert await two.throttle.run_due(everything=True) == 0  # claimed by one: left due, not taken
    gate.release.set()
    # One's finish dropped only its own claim: the key another change made due meanwhile stayed due, and one's
    # next round took it (green, blue, then green again).
    assert await claimed == 3
    assert await _due(redis, keys) == set()
    assert await redis.zcard(keys.due_claimed) == 0
    assert await _exact(redis, keys, world)


async def test_a_key_claimed_by_a_subscriber_that_died_is_taken_over_when_its_lease_ends(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber
) -> None:
    sub = make_subscriber(min_intervals={"color": 3600})
    await sub.start()
    world.items[1]["color"] = "red"  # a change whose recompute the dead subscriber had claimed
    seconds, micros = await redis.time()
    now_ms = seconds * 1000 + micros // 1000  # the sets hold Redis's clock
    await redis.zadd(keys.due_claimed, {"color/red": now_ms + 30_000, "color/green": now_ms - 1000})
    assert await sub.throttle.run_due() == 1  # the lease that ran out, not the one still running
    assert await _ids(redis, keys, "green") == _truth(world, "green")
    assert [k.decode() for k in await redis.zrange(keys.due_claimed, 0, -1)] == ["color/red"]
    assert await sub.throttle.is_due("color/red")


async def test_a_due_recompute_that_keeps_failing_is_dead_lettered(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    sub = make_subscriber(min_intervals={"color": 3600}, max_attempts=2)
    await sub.start()
    world.failing.add("color/green")
    seconds, micros = await redis.time()
    await redis.zadd(keys.due, {"color/green": seconds * 1000 + micros // 1000})
    assert await sub.throttle.run_due() == 0  # it failed: due again after a backoff of at least the interval
    assert await _due(redis, keys) == {"color/green"}
    assert await sub.throttle.run_due() == 0  # and not before
    assert world.computes["color/green"] == 2  # the warm-up's, and the one due recompute that failed
    await sub.throttle.run_due(everything=True)  # the second failure: dead-lettered
    assert await _due(redis, keys) == set()
    letters = await redis.xrange(keys.dead_letters)
    assert [(f[b"kind"], f[b"key"]) for _, f in letters] == [(b"due", b"color/green")]
    assert b"source unavailable for color/green" in letters[0][1][b"reason"]


async def test_burst_mode_leaves_nothing_due(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    sub = make_subscriber(min_intervals={"color": 3600})
    await sub.start()
    for n in range(4):
        await _move(world, publisher, 1 + n % 2, COLORS[n % 3])
        await sub.drain()
    assert await redis.zcard(keys.due) == 0
    assert await _exact(redis, keys, world)


async def test_a_subscriber_without_intervals_recomputes_keys_left_due(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber
) -> None:
    # Another subscriber (with SUBSCRIBER_MIN_INTERVALS) put the key off, then went away; this one names none.
    sub = make_subscriber()
    await sub.start()
    world.items[1]["color"] = "red"
    seconds, micros = await redis.time()
    await redis.zadd(keys.due, {"color/red": seconds * 1000 + micros // 1000})
    assert await sub.throttle.step() == 1
    assert await _ids(redis, keys, "red") == _truth(world, "red")


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
        # The interval, then one compute each, and the margin for a loaded machine.
        await wait_until(
            lambda: _exact(redis, keys, world),
            timeout=interval + BUSY_MARGIN,
            message="the put-off keys were not applied",
        )
    finally:
        await stop(sub, task, budget=2)


def test_min_intervals_name_views(make_subscriber: MakeSubscriber) -> None:
    with pytest.raises(ConfigError, match="SUBSCRIBER_MIN_INTERVALS names no view 'colour'"):
        make_subscriber(min_intervals={"colour": 1})
