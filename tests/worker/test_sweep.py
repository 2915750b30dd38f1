"""The sweep (the safety net under the change log), its lock, and the warm-up on start."""

from __future__ import annotations

import json

from redis.asyncio import Redis

from freshviews.core.keys import DATA, DIGEST, FENCE, TOMBSTONE, VERSION, Keys
from freshviews.worker.store import PendingWrite
from tests.support.metrics import sample
from tests.support.world import World
from tests.worker.helpers import MakeSubscriber, cached

REPAIRS = "freshviews_sweep_repairs_total"


async def _snapshot(redis: Redis, keys: Keys, world: World) -> dict[str, dict[bytes, bytes]]:
    """Data, version and digest of every key (the fence advances on every sweep, by design)."""
    return {
        k: {f: v for f, v in (await cached(redis, keys, k)).items() if f != FENCE} for k in sorted(world.view_keys())
    }


async def test_sweep_repairs_exactly_what_differs_and_deletes_what_is_gone(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber
) -> None:
    sub = make_subscriber()
    await sub.start()
    before = await _snapshot(redis, keys, world)
    total = len(before)

    # A change the log never saw (e.g. Redis was down when it was published).
    world.items[2]["name"] = "lost change"
    repairs_before = sample(REPAIRS, {"view": "item"})
    result = await sub.sweep("test", lock=False)
    assert result is not None
    assert (result.keys, result.repaired, result.unchanged) == (total, 1, total - 1)
    assert (result.deleted, result.failed, result.fenced) == (0, 0, 0)
    assert sample(REPAIRS, {"view": "item"}) - repairs_before == 1
    after = await _snapshot(redis, keys, world)
    assert json.loads(after["item/2"][DATA])["name"] == "lost change"
    assert int(after["item/2"][VERSION]) > int(before["item/2"][VERSION])
    assert {k: v for k, v in after.items() if k != "item/2"} == {k: v for k, v in before.items() if k != "item/2"}

    # A row deleted without a change: its key is no longer enumerated, and its cached value must go.
    gone_color = world.items[3]["color"]
    del world.items[3]
    result = await sub.sweep("test", lock=False)
    assert result is not None
    assert (result.repaired, result.deleted) == (2, 1)  # item/3 deleted, its colour list rewritten
    assert result.keys == total  # the enumerated keys, plus the stray item/3
    stored = await cached(redis, keys, "item/3")
    assert DATA not in stored
    assert stored[DIGEST] == TOMBSTONE
    assert await redis.ttl(keys.value("item/3")) > 0
    assert 3 not in json.loads((await cached(redis, keys, f"color/{gone_color}"))[DATA])["ids"]

    world.computes.clear()
    result = await sub.sweep("test", lock=False)
    assert result is not None
    assert (result.repaired, result.deleted, result.unchanged) == (0, 0, total - 1)
    assert "item/3" not in world.computes  # a tombstone is not swept again
    last = await redis.hgetall(keys.sweep)
    assert last[b"repaired"] == b"0"
    assert last[b"reason"] == b"test"


async def test_sweep_keeps_a_stray_key_that_is_alive(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber
) -> None:
    # A cached key enumerate() did not list is recomputed, not blindly deleted.
    sub = make_subscriber()
    await sub.start()
    [ticket] = await sub.store.tickets(["item/4"])
    await redis.delete(keys.value("item/4"))
    await sub.store.write([PendingWrite("item/4", ticket, b'"stale"')])
    result = await sub.sweep("test", lock=False)
    assert result is not None
    assert result.repaired == 1
    assert json.loads((await cached(redis, keys, "item/4"))[DATA])["name"] == "item 4"


async def test_sweep_leaves_keys_of_no_view_alone(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber
) -> None:
    sub = make_subscriber()
    await sub.start()
    await redis.hset(keys.value("retired/1"), mapping={"d": "1", "v": "1", "h": "x", "f": "1"})
    result = await sub.sweep("test", lock=False)
    assert result is not None
    assert result.failed == 0
    assert await redis.hget(keys.value("retired/1"), "d") == b"1"


async def test_a_failing_compute_is_counted_and_does_not_stop_the_sweep(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber
) -> None:
    sub = make_subscriber()
    world.failing.add("item/1")
    await sub.start()
    assert await redis.exists(keys.value("item/1")) == 0
    assert await redis.exists(keys.value("item/2")) == 1
    last = await redis.hgetall(keys.sweep)
    assert last[b"failed"] == b"1"
    assert last[b"reason"] == b"warm"


async def test_only_one_subscriber_sweeps_at_a_time(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber
) -> None:
    first, second = make_subscriber(consumer="first"), make_subscriber(consumer="second")
    assert await first.sweeper.lease.acquire()
    world.computes.clear()
    assert await second.sweep("timer") is None
    assert sum(world.computes.values()) == 0
    assert await redis.get(keys.sweep_lock) == b"first"  # the loser did not release the winner's lock
    assert 0 < await redis.pttl(keys.sweep_lock) <= 5_000  # the default lease

    assert await first.sweeper.lease.release()
    result = await second.sweep("timer")
    assert result is not None
    assert result.keys == len(world.view_keys())
    assert await redis.exists(keys.sweep_lock) == 0  # released after the sweep


async def test_start_warms_an_empty_cache(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber
) -> None:
    sub = make_subscriber()
    assert not await redis.exists(keys.warm)
    await sub.start()
    assert world.computes == dict.fromkeys(world.view_keys(), 1)
    for key in world.view_keys():
        assert DATA in await cached(redis, keys, key), key
    groups = await redis.xinfo_groups(keys.changes)
    assert [g["name"] for g in groups] == [b"subscribers"]
    # The readiness signal the read side and `check` report.
    assert await redis.exists(keys.warm)


async def test_a_sweep_interrupted_by_shutdown_leaves_the_cache_warming(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber
) -> None:
    sub = make_subscriber()
    await sub.store.tickets(["item/1"])  # connect; nothing cached yet
    result = await sub.sweeper.sweep("warm", should_stop=lambda: True)
    assert result.interrupted
    assert not await redis.exists(keys.warm)
    assert (await sub.sweeper.sweep("warm")).interrupted is False
    assert await redis.exists(keys.warm)


async def test_start_does_not_sweep_a_cache_that_has_values(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber
) -> None:
    sub = make_subscriber()
    [ticket] = await sub.store.tickets(["item/1"])
    await sub.store.write([PendingWrite("item/1", ticket, b"{}")])
    await sub.start()
    assert sum(world.computes.values()) == 0
    assert sorted(await sub.store.cached_view_keys()) == ["item/1"]
    # Values in Redis: filled by an earlier run, so the cache counts as warm.
    assert await redis.exists(keys.warm)
    # A second start with a warm cache does not sweep either, and the existing group is kept.
    await make_subscriber(consumer="other").start()
    assert sum(world.computes.values()) == 0
