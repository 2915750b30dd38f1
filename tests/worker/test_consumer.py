"""Consuming the change log: coalescing, acknowledgement, dead letters, reclaiming abandoned changes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from redis.asyncio import Redis

from freshviews.core.events import FIELD, MAX_ENCODED_BYTES, Change, Operation
from freshviews.core.keys import DATA, Keys
from freshviews.publish.publisher import Publisher
from freshviews.worker.service import Subscriber
from tests.support.helpers import wait_until
from tests.support.metrics import sample
from tests.support.world import World, item_change
from tests.worker.helpers import MakeSubscriber, cached

GROUP = "subscribers"
HISTOGRAM = "freshviews_changes_per_recompute"


async def _pending(redis: Redis, keys: Keys) -> int:
    return int((await redis.xpending(keys.changes, GROUP))["pending"])


async def _name(redis: Redis, keys: Keys, item_id: int) -> str:
    return str(json.loads((await cached(redis, keys, f"item/{item_id}"))[DATA])["name"])


async def _dead_letters(redis: Redis, keys: Keys) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode(errors="replace") for k, v in fields.items()}
        for _, fields in await redis.xrange(keys.dead_letters)
    ]


def _histogram() -> dict[str, float]:
    return {
        "sum": sample(f"{HISTOGRAM}_sum"),
        "count": sample(f"{HISTOGRAM}_count"),
        "le500": sample(f"{HISTOGRAM}_bucket", {"le": "500.0"}),
        "le1000": sample(f"{HISTOGRAM}_bucket", {"le": "1000.0"}),
    }


async def _burst(publisher: Publisher, world: World, count: int = 1000) -> None:
    """``count`` changes to item 1 (green), published while nothing consumes; the last one sets its name."""
    changes = []
    for n in range(count):
        world.items[1]["name"] = f"rename {n}"
        changes.append(item_change(1, color="green", n=n))
    assert len(await publisher.publish_many(changes)) == count


async def _warm(sub: Subscriber[World], world: World) -> None:
    await sub.start()
    assert set(world.computes) == world.view_keys()
    world.computes.clear()


async def test_a_burst_drained_in_one_batch_costs_one_recompute_per_key(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    sub = make_subscriber(batch_size=1000)
    await _warm(sub, world)
    await _burst(publisher, world)
    before = _histogram()
    assert await sub.drain() == 1000
    assert world.computes == {"item/1": 1, "color/green": 1}
    after = _histogram()
    # Each of the two keys observed 1000 coalesced changes.
    assert after["sum"] - before["sum"] == 2000
    assert after["count"] - before["count"] == 2
    assert after["le500"] - before["le500"] == 0
    assert after["le1000"] - before["le1000"] == 2
    assert await _name(redis, keys, 1) == "rename 999"
    assert await _pending(redis, keys) == 0


async def test_drain_coalesces_a_backlog_larger_than_one_read(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    # Burst mode (`run --burst`) must coalesce a backlog like the run loop does, whatever the read size.
    sub = make_subscriber()  # the default batch_size (500) is below the backlog
    await _warm(sub, world)
    await _burst(publisher, world)
    assert await sub.drain() == 1000
    assert world.computes == {"item/1": 1, "color/green": 1}
    assert await _pending(redis, keys) == 0


async def test_the_run_loop_coalesces_a_backlog_larger_than_one_read(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    # No sweep timer: its computes would blur the count.
    sub = make_subscriber(batch_size=100)
    await _warm(sub, world)
    await _burst(publisher, world)
    task = asyncio.create_task(sub.run())
    try:
        await wait_until(lambda: _pending_and_lag_zero(redis, keys), timeout=10, message="backlog not consumed")
    finally:
        sub.stop()
        await asyncio.wait_for(task, timeout=5)
    assert world.computes == {"item/1": 1, "color/green": 1}
    assert await _name(redis, keys, 1) == "rename 999"


async def _pending_and_lag_zero(redis: Redis, keys: Keys) -> bool:
    [group] = await redis.xinfo_groups(keys.changes)
    last = (await redis.xrevrange(keys.changes, count=1))[0][0]
    return bool(group["pending"] == 0 and group["last-delivered-id"] == last)


async def test_failing_compute_is_retried_then_dead_lettered_and_acked(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    sub = make_subscriber(max_attempts=3)
    await _warm(sub, world)
    for i in (1, 2, 3):
        world.items[i]["name"] = f"new {i}"
    world.failing.add("item/2")
    dead_before = sample("freshviews_dead_letters_total", {"reason": "recompute"})
    ids = await publisher.publish(*(item_change(i, color=world.items[i]["color"]) for i in (1, 2, 3)))

    outcome = await sub.process(await sub.consumer.read(block=False))
    assert (outcome.entries, outcome.acked, outcome.dead_lettered) == (3, 3, 1)
    assert set(outcome.failed_keys) == {"item/2"}
    assert world.computes["item/2"] == 3
    # The others were applied once, not once per attempt.
    assert world.computes["item/1"] == world.computes["item/3"] == 1
    assert await _name(redis, keys, 1) == "new 1"
    assert await _name(redis, keys, 3) == "new 3"
    assert await _name(redis, keys, 2) == "item 2"  # stale until the sweep repairs it
    assert await _pending(redis, keys) == 0

    [letter] = await _dead_letters(redis, keys)
    assert letter["id"] == ids[1]
    assert letter["kind"] == "recompute"
    assert letter["attempts"] == "3"
    assert "item/2" in letter["reason"]
    assert "RuntimeError" in letter["reason"]
    assert "source unavailable" in letter["reason"]
    assert json.loads(letter["payload"])["i"] == "2"
    assert sample("freshviews_dead_letters_total", {"reason": "recompute"}) - dead_before == 1


async def test_a_compute_that_recovers_within_the_attempts_is_applied(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    sub = make_subscriber(max_attempts=3)
    await _warm(sub, world)
    world.items[2]["name"] = "recovered"
    world.failing.add("item/2")
    real = world._passed

    async def flaky(key: str, value: Any) -> Any:
        if world.computes[key] >= 1:
            world.failing.discard(key)  # the second attempt succeeds
        return await real(key, value)

    world._passed = flaky  # type: ignore[method-assign]
    await publisher.publish(item_change(2, color="blue"))
    assert await sub.drain() == 1
    assert world.computes["item/2"] == 2
    assert await _name(redis, keys, 2) == "recovered"
    assert await redis.xlen(keys.dead_letters) == 0
    assert await _pending(redis, keys) == 0


async def test_bad_entries_are_dead_lettered_with_reasons_and_do_not_stop_the_others(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    sub = make_subscriber(max_attempts=2)
    await _warm(sub, world)
    world.items[1]["name"] = "good"
    ghost = Change(entity="ghost", id="1", op=Operation.UPDATE).encode()
    unparsable_id = Change(entity="item", id="abc", op=Operation.UPDATE).encode()  # no key can be made from it
    bad: list[tuple[dict[Any, Any], str, str]] = [
        ({"x": "garbage"}, "decode", "no 'c' field"),
        ({FIELD: b"not json"}, "decode", "invalid change"),
        ({FIELD: b"{" + b" " * MAX_ENCODED_BYTES + b"}"}, "decode", "byte limit"),
        ({FIELD: b'{"e":"item","i":"1","o":"u","s":99}'}, "decode", "s:"),
        ({FIELD: unparsable_id}, "invalid", "'abc' is not a canonical integer"),
    ]
    injected = {await redis.xadd(keys.changes, fields): (kind, reason) for fields, kind, reason in bad}
    # A change no view depends on is not an error: acknowledged and counted, never dead-lettered.
    ignored = sample("freshviews_changes_ignored_total", {"entity": "ghost"})
    await redis.xadd(keys.changes, {FIELD: ghost})
    await publisher.publish(item_change(1, color="green"))

    assert await sub.drain() == len(injected) + 2
    assert sample("freshviews_changes_ignored_total", {"entity": "ghost"}) == ignored + 1
    assert await _name(redis, keys, 1) == "good"
    assert await _pending(redis, keys) == 0
    letters = await _dead_letters(redis, keys)
    assert len(letters) == len(injected)
    for letter in letters:
        kind, reason = injected[letter["id"].encode()]
        assert letter["kind"] == kind
        assert reason in letter["reason"], letter["reason"]
    oversize = next(x for x in letters if "byte limit" in x["reason"])
    assert len(oversize["payload"]) == 4096  # the payload is cut, the size is kept
    assert int(oversize["size"]) == MAX_ENCODED_BYTES + 2
    assert next(x for x in letters if x["kind"] == "decode" and "no 'c'" in x["reason"])["fields"] == "x"


async def test_own_pending_changes_are_applied_by_the_next_drain(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    first = make_subscriber(consumer="a")
    await _warm(first, world)
    world.items[1]["name"] = "after restart"
    await publisher.publish(item_change(1, color="green"))
    assert len(await first.consumer.read(block=False)) == 1  # then the process dies
    restarted = make_subscriber(consumer="a")
    assert await restarted.drain() == 1
    assert await _name(redis, keys, 1) == "after restart"
    assert await _pending(redis, keys) == 0


async def test_changes_of_a_dead_consumer_are_reclaimed_after_the_idle_time(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    sub_a = make_subscriber(consumer="a")
    sub_b = make_subscriber(consumer="b", reclaim_idle_ms=200)
    await _warm(sub_a, world)
    await sub_b.start()
    world.items[1]["name"] = "reclaimed"
    [change_id] = await publisher.publish(item_change(1, color="green"))
    assert [e[0].decode() for e in await sub_a.consumer.read(block=False)] == [change_id]  # A dies holding it
    reclaimed_before = sample("freshviews_changes_reclaimed_total")

    assert await sub_b.drain() == 0  # not B's, and not new
    assert await sub_b.consumer.reclaim() == []  # not idle long enough yet

    async def reclaim_and_apply() -> bool:
        entries = await sub_b.consumer.reclaim()
        if entries:
            await sub_b.process(entries)
        return bool(entries)

    await wait_until(reclaim_and_apply, timeout=5, interval=0.05, message="B never reclaimed A's change")
    assert await _name(redis, keys, 1) == "reclaimed"
    assert await _pending(redis, keys) == 0
    assert sample("freshviews_changes_reclaimed_total") - reclaimed_before == 1
    assert await redis.xlen(keys.dead_letters) == 0


async def test_a_change_delivered_too_often_is_dead_lettered(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    sub_a = make_subscriber(consumer="a")
    sub_b = make_subscriber(consumer="b", reclaim_idle_ms=100, max_deliveries=2)
    sub_c = make_subscriber(consumer="c", reclaim_idle_ms=100, max_deliveries=2)
    await _warm(sub_a, world)
    world.items[1]["name"] = "poison"
    [change_id] = await publisher.publish(item_change(1, color="green"))
    assert len(await sub_a.consumer.read(block=False)) == 1  # delivery 1: A crashes on it

    async def b_reclaims() -> bool:
        return bool(await sub_b.consumer.reclaim())  # delivery 2: still handed out; B crashes too

    await wait_until(b_reclaims, timeout=5, interval=0.05, message="B never reclaimed")

    async def c_dead_letters() -> bool:
        assert await sub_c.consumer.reclaim() == []  # delivery 3 is over the limit: never handed out
        return bool(await redis.xlen(keys.dead_letters))

    await wait_until(c_dead_letters, timeout=5, interval=0.05, message="C never dead-lettered it")
    [letter] = await _dead_letters(redis, keys)
    assert letter["id"] == change_id
    assert letter["kind"] == "redelivered"
    assert letter["reason"] == "delivered 3 times without being acknowledged"
    assert letter["attempts"] == "3"
    assert world.computes["item/1"] == 0  # never applied
    assert await _name(redis, keys, 1) == "item 1"
    assert await _pending(redis, keys) == 0


async def test_the_run_loop_does_not_process_a_batch_in_flight_twice(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    # The reclaim loop re-reads this consumer's own pending changes (a batch whose processing raised). A batch
    # still being processed is pending too; it must not be processed a second time meanwhile.
    sub = make_subscriber(reclaim_interval=0.05)
    await _warm(sub, world)
    reclaim_steps = 0
    real_reclaim = sub.consumer.reclaim

    async def counting_reclaim() -> list[Any]:
        nonlocal reclaim_steps
        reclaim_steps += 1
        return await real_reclaim()

    sub.consumer.reclaim = counting_reclaim  # type: ignore[method-assign]
    world.items[1]["name"] = "slow"
    gate = world.hold("item/1")
    await publisher.publish(item_change(1, color="green"))
    task = asyncio.create_task(sub.run())
    try:
        await asyncio.wait_for(gate.reached.wait(), timeout=5)
        seen = reclaim_steps
        await wait_until(lambda: reclaim_steps >= seen + 3, timeout=5, message="the reclaim loop is not running")
        assert world.computes["item/1"] == 1, "the batch in flight was processed again by the reclaim loop"
        gate.release.set()
        await wait_until(lambda: _pending_and_lag_zero(redis, keys), timeout=5)
    finally:
        gate.release.set()
        sub.stop()
        await asyncio.wait_for(task, timeout=5)
    assert await _name(redis, keys, 1) == "slow"
