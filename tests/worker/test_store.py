"""The version fence: tickets, fenced writes, tombstones, and update notifications."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from freshviews.core.keys import DATA, DIGEST, FENCE, TOMBSTONE, VERSION, Keys
from freshviews.publish.publisher import Publisher
from freshviews.worker.recompute import Recomputer
from freshviews.worker.store import ISSUED_TTL_MS, CacheStore, PendingWrite, WriteOutcome, digest
from tests.support.helpers import wait_until
from tests.support.world import World, item_change, registry
from tests.worker.helpers import MakeSubscriber, cached

Updates = Callable[[], Awaitable[list[str]]]
KEY = "item/1"


async def _redis_now_us(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1_000_000 + int(micros)


async def test_tickets_come_from_the_redis_clock_and_pass_the_fence(redis: Redis, keys: Keys) -> None:
    store = CacheStore(redis, keys)
    assert await store.tickets([]) == []
    before = await _redis_now_us(redis)
    [ticket] = await store.tickets([KEY])
    assert before <= ticket <= await _redis_now_us(redis)

    # A fence ahead of the clock (another subscriber's, or a stepped clock) still gets a higher ticket.
    future = before + 3_600_000_000
    await redis.hset(keys.value(KEY), FENCE, future)
    [fenced, other] = await store.tickets([KEY, "item/2"])
    assert fenced == future + 1
    assert other < future


async def test_a_ticket_is_never_below_one_issued_before_whatever_the_clock_says(redis: Redis, keys: Keys) -> None:
    # What a failover onto a node whose clock is an hour behind looks like to the key: the tickets the old
    # master issued are ahead of this clock, and none was written yet (the fence is below them).
    store = CacheStore(redis, keys)
    ahead = await _redis_now_us(redis) + 3_600_000_000
    await redis.set(keys.issued(KEY), ahead)
    await redis.hset(keys.value(KEY), FENCE, 5)
    first, second = (await store.tickets([KEY]))[0], (await store.tickets([KEY]))[0]
    assert (first, second) == (ahead + 1, ahead + 2)
    assert await redis.get(keys.issued(KEY)) == str(ahead + 2).encode()
    assert (await store.stored(KEY)).ticket == ahead + 3
    assert 0 < await redis.pttl(keys.issued(KEY)) <= ISSUED_TTL_MS


async def test_a_ticket_for_a_key_never_written_caches_nothing(redis: Redis, keys: Keys) -> None:
    store = CacheStore(redis, keys)
    [ticket] = await store.tickets([KEY])
    assert await redis.get(keys.issued(KEY)) == str(ticket).encode()
    assert await redis.exists(keys.value(KEY)) == 0
    assert await store.is_empty()


async def test_an_issued_ticket_is_kept_only_while_it_is_above_the_fence(redis: Redis, keys: Keys) -> None:
    store = CacheStore(redis, keys)
    [older] = await store.tickets([KEY])
    [newer] = await store.tickets([KEY])
    # The older write lands first: the newer ticket is still out, and must still count.
    assert await store.write([PendingWrite(KEY, older, b"1")]) == [WriteOutcome.WRITTEN]
    assert await redis.get(keys.issued(KEY)) == str(newer).encode()
    assert await store.write([PendingWrite(KEY, newer, b"2")]) == [WriteOutcome.WRITTEN]
    # The fence holds it now: nothing more to keep for the key.
    assert await redis.exists(keys.issued(KEY)) == 0
    [after] = await store.tickets([KEY])
    assert after > newer


async def test_tickets_increase_across_writes(redis: Redis, keys: Keys) -> None:
    store = CacheStore(redis, keys)
    seen: list[int] = []
    for n in range(20):
        [ticket] = await store.tickets([KEY])
        assert await store.write([PendingWrite(KEY, ticket, json.dumps(n).encode())]) == [WriteOutcome.WRITTEN]
        seen.append(ticket)
    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen)
    assert int((await cached(redis, keys, KEY))[VERSION]) == seen[-1]


async def test_write_stores_data_version_digest_and_fence(redis: Redis, keys: Keys, updates: Updates) -> None:
    store = CacheStore(redis, keys)
    assert await store.write([]) == []
    [ticket] = await store.tickets([KEY])
    assert await store.write([PendingWrite(KEY, ticket, b'{"a":1}')]) == [WriteOutcome.WRITTEN]
    stored = await cached(redis, keys, KEY)
    assert stored == {
        DATA: b'{"a":1}',
        VERSION: str(ticket).encode(),
        DIGEST: digest(b'{"a":1}'),
        FENCE: str(ticket).encode(),
    }
    assert await redis.ttl(keys.value(KEY)) == -1
    await wait_until(lambda: _has(updates, 1), timeout=5, message="no update notification")
    assert await updates() == [f"{ticket} {KEY}"]


async def _has(updates: Updates, count: int) -> bool:
    return len(await updates()) >= count


async def test_lower_or_equal_ticket_is_fenced(redis: Redis, keys: Keys, updates: Updates) -> None:
    store = CacheStore(redis, keys)
    [old] = await store.tickets([KEY])
    [new] = await store.tickets(["item/2"])  # a later ticket for the same key: the clock moved on
    new = max(new, old + 1)
    assert await store.write([PendingWrite(KEY, new, b'"new"')]) == [WriteOutcome.WRITTEN]
    outcomes = await store.write([PendingWrite(KEY, old, b'"old"'), PendingWrite(KEY, new, b'"same ticket"')])
    assert outcomes == [WriteOutcome.FENCED, WriteOutcome.FENCED]
    stored = await cached(redis, keys, KEY)
    assert stored[DATA] == b'"new"'
    assert int(stored[VERSION]) == int(stored[FENCE]) == new
    await wait_until(lambda: _has(updates, 1), timeout=5)
    assert await updates() == [f"{new} {KEY}"]  # fenced writes publish nothing


async def test_unchanged_value_keeps_version_advances_fence_and_publishes_nothing(
    redis: Redis, keys: Keys, updates: Updates
) -> None:
    store = CacheStore(redis, keys)
    [first] = await store.tickets([KEY])
    await store.write([PendingWrite(KEY, first, b'"v"')])
    [second] = await store.tickets([KEY])
    assert await store.write([PendingWrite(KEY, second, b'"v"')]) == [WriteOutcome.UNCHANGED]
    stored = await cached(redis, keys, KEY)
    assert int(stored[VERSION]) == first  # the ETag does not change: clients keep their 304s
    assert int(stored[FENCE]) == second
    # The advanced fence refuses a recompute that started between the two.
    assert await store.write([PendingWrite(KEY, second - 1, b'"stale"')]) == [WriteOutcome.FENCED]
    await wait_until(lambda: _has(updates, 1), timeout=5)
    [third] = await store.tickets([KEY])
    assert await store.write([PendingWrite(KEY, third, b'"w"')]) == [WriteOutcome.WRITTEN]
    await wait_until(lambda: _has(updates, 2), timeout=5)
    assert await updates() == [f"{first} {KEY}", f"{third} {KEY}"]


async def test_tombstone_deletes_data_and_cannot_be_resurrected_by_an_older_ticket(
    redis: Redis, keys: Keys, updates: Updates
) -> None:
    store = CacheStore(redis, keys, tombstone_ttl=600)
    [t1] = await store.tickets([KEY])
    await store.write([PendingWrite(KEY, t1, b'"alive"')])
    [stale] = await store.tickets([KEY])  # a recompute that read the row before it was deleted
    [t2] = await store.tickets(["item/9"])
    t2 = max(t2, stale + 1)
    assert await store.write([PendingWrite(KEY, t2, None)]) == [WriteOutcome.WRITTEN]
    stored = await cached(redis, keys, KEY)
    assert DATA not in stored
    assert stored[DIGEST] == TOMBSTONE
    assert int(stored[VERSION]) == t2
    assert 0 < await redis.ttl(keys.value(KEY)) <= 600
    # A second delete is no change.
    [t3] = await store.tickets([KEY])
    assert await store.write([PendingWrite(KEY, t3, None)]) == [WriteOutcome.UNCHANGED]

    assert await store.write([PendingWrite(KEY, stale, b'"alive"')]) == [WriteOutcome.FENCED]
    assert DATA not in await cached(redis, keys, KEY)

    [t4] = await store.tickets([KEY])
    assert t4 > t3
    assert await store.write([PendingWrite(KEY, t4, b'"reborn"')]) == [WriteOutcome.WRITTEN]
    stored = await cached(redis, keys, KEY)
    assert stored[DATA] == b'"reborn"'
    assert int(stored[VERSION]) == t4
    assert await redis.ttl(keys.value(KEY)) == -1  # the tombstone's expiry is gone
    await wait_until(lambda: _has(updates, 3), timeout=5)
    assert await updates() == [f"{t1} {KEY}", f"{t2} {KEY}", f"{t4} {KEY}"]


async def test_cached_view_keys_and_is_empty(redis: Redis, keys: Keys) -> None:
    store = CacheStore(redis, keys)
    assert await store.is_empty()
    assert await store.cached_view_keys() == []
    await redis.set("unrelated", "1")
    assert await store.is_empty()
    tickets = await store.tickets(["item/1", "color/red"])
    await store.write([PendingWrite("item/1", tickets[0], b"1"), PendingWrite("color/red", tickets[1], b"2")])
    assert not await store.is_empty()
    assert sorted(await store.cached_view_keys(count=1)) == ["color/red", "item/1"]
    assert await store.digests(["item/1", "item/2"]) == [digest(b"1"), None]


async def test_slow_recompute_that_read_old_data_is_fenced(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    sub = make_subscriber()
    await sub.start()  # warm: every key cached
    world.items[1]["name"] = "A"
    gate = world.hold(KEY)
    slow = Recomputer(sub.store, world, concurrency=1)
    task_a = asyncio.create_task(slow.run({KEY: registry.parse(KEY)}, trigger="change"))
    await asyncio.wait_for(gate.reached.wait(), timeout=5)  # A took its ticket and read name "A"

    world.items[1]["name"] = "B"
    assert await publisher.publish(item_change(1, color="green"))
    assert await sub.drain() == 1
    after_b = await cached(redis, keys, KEY)
    assert json.loads(after_b[DATA])["name"] == "B"

    gate.release.set()
    result = await asyncio.wait_for(task_a, timeout=5)
    assert result.outcomes == {KEY: WriteOutcome.FENCED}
    after_a = await cached(redis, keys, KEY)
    assert json.loads(after_a[DATA])["name"] == "B"
    assert int(after_a[VERSION]) == int(after_b[VERSION])


async def test_two_subscribers_finishing_out_of_order_keep_the_newer_value(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher, updates: Updates
) -> None:
    sub_a, sub_b = make_subscriber(consumer="a"), make_subscriber(consumer="b")
    await sub_a.start()
    await sub_b.start()
    world.items[1]["name"] = "A"
    assert await publisher.publish(item_change(1, color="green"))
    batch_a = await sub_a.consumer.read(block=False)
    assert len(batch_a) == 1
    gate = world.hold(KEY)
    task_a = asyncio.create_task(sub_a.process(batch_a))
    await asyncio.wait_for(gate.reached.wait(), timeout=5)

    world.items[1]["name"] = "B"
    assert await publisher.publish(item_change(1, color="green"))
    assert await sub_b.drain() == 1
    version_b = int((await cached(redis, keys, KEY))[VERSION])

    gate.release.set()
    outcome_a = await asyncio.wait_for(task_a, timeout=5)
    # A wrote color/green (unchanged) as soon as it was computed; item/1, held, was rewritten by B meanwhile,
    # so A's write of it is fenced: A writes nothing new.
    assert (outcome_a.keys, outcome_a.written, outcome_a.fenced) == (2, 0, 1)
    assert outcome_a.acked == 1  # a fenced write means a newer value is there: the change is done
    stored = await cached(redis, keys, KEY)
    assert json.loads(stored[DATA])["name"] == "B"
    assert int(stored[VERSION]) == version_b
    assert await redis.xpending(keys.changes, "subscribers") == {
        "pending": 0, "min": None, "max": None, "consumers": []
    }  # fmt: skip

    # Every notification of the key carries a higher version than the one before: it never went down.
    messages = [m.split(" ", 1) for m in await updates()]
    versions = [int(v) for v, k in messages if k == KEY]
    assert versions == sorted(versions)
    assert versions[-1] == version_b


async def test_a_write_notifies_version_and_key(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher, updates: Updates
) -> None:
    sub = make_subscriber()
    await sub.start()
    await wait_until(
        lambda: _has(updates, len(world.view_keys())), timeout=5, message="no notifications for the warm-up"
    )
    warm = await updates()
    assert {m.split(" ", 1)[1] for m in warm} == world.view_keys()
    world.items[2]["name"] = "renamed"
    assert await publisher.publish(item_change(2, color="blue"))
    await sub.drain()
    await wait_until(lambda: _has(updates, len(warm) + 1), timeout=5, message="no notification for item/2")
    version = int((await cached(redis, keys, "item/2"))[VERSION])
    # color/blue was recomputed too but did not change: no notification for it.
    assert (await updates())[len(warm) :] == [f"{version} item/2"]


async def test_a_fast_view_is_written_without_waiting_for_a_slow_one(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    sub = make_subscriber()
    await sub.start()
    world.items[1]["name"] = "renamed"
    world.items[1]["color"] = "blue"
    gate = world.hold(KEY)  # item/1 is slow this time
    assert await publisher.publish(item_change(1, color="blue", old_color="green"))
    batch = await sub.consumer.read(block=False)
    task = asyncio.create_task(sub.process(batch))
    try:
        await asyncio.wait_for(gate.reached.wait(), timeout=5)
        # The colour lists of the same batch are already in Redis while item/1 is still computing.
        await wait_until(
            lambda: _color_ids(redis, keys, "blue", 1), timeout=5, message="color/blue waited for the slow view"
        )
    finally:
        gate.release.set()
        await asyncio.wait_for(task, timeout=5)
    assert json.loads((await cached(redis, keys, KEY))[DATA])["name"] == "renamed"


async def _color_ids(redis: Redis, keys: Keys, color: str, item_id: int) -> bool:
    data = (await cached(redis, keys, f"color/{color}")).get(DATA)
    return data is not None and item_id in json.loads(data)["ids"]
