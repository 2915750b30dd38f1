"""A change log trimmed past changes the group never read: detected once, counted, repaired by a sweep."""

from __future__ import annotations

import asyncio
import json

from redis.asyncio import Redis

from freshviews.core.keys import DATA, Keys
from freshviews.publish.publisher import Publisher
from tests.support.helpers import wait_until
from tests.support.metrics import sample
from tests.support.world import World, item_change
from tests.worker.helpers import MakeSubscriber, cached

#: Slack on top of each bound the product promises, for a loaded 2-core machine.
MARGIN = 2.0


async def _name(redis: Redis, keys: Keys, item_id: int) -> str | None:
    data = (await cached(redis, keys, f"item/{item_id}")).get(DATA)
    return None if data is None else str(json.loads(data)["name"])


async def test_a_trimmed_log_is_detected_and_swept(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    first = make_subscriber(consumer="c1")
    await first.start()
    await publisher.publish(item_change(1))
    assert await first.drain() == 1  # the group has a position now

    # While no subscriber runs, item 2 changes and the log is trimmed past that change.
    world.items[2]["name"] = "renamed while down"
    await publisher.publish(item_change(2))
    for _ in range(5):
        await publisher.publish(item_change(3))
    await redis.xtrim(keys.changes, maxlen=2, approximate=False)

    gaps = sample("freshviews_log_gaps_total")
    sweeps = sample("freshviews_sweeps_total", {"reason": "gap"})
    reclaim_interval = 0.05
    sub = make_subscriber(consumer="c2", reclaim_interval=reclaim_interval)
    checks = 0
    real_check = sub.consumer.reader.trimmed_gap

    async def counted_check(*, reported: bytes | None = None) -> bytes | None:
        nonlocal checks
        checks += 1
        return await real_check(reported=reported)

    sub.consumer.reader.trimmed_gap = counted_check  # type: ignore[method-assign]
    # The consume loop waits until told: meanwhile the group stays behind the hole, as a slow consumer's would.
    caught_up = asyncio.Event()
    real_step = sub.consumer.step

    async def held_step() -> int:
        await caught_up.wait()
        return await real_step()

    sub.consumer.step = held_step  # type: ignore[method-assign]
    task = asyncio.create_task(sub.run())
    try:
        # Checked on start, and swept at once: a sweep of this world takes milliseconds.
        await wait_until(
            lambda: sample("freshviews_sweeps_total", {"reason": "gap"}) > sweeps,
            timeout=MARGIN,
            message="no gap sweep",
        )
        assert await _name(redis, keys, 2) == "renamed while down"
        # Checked again on every reclaim round: three rounds later the same hole has not been reported again.
        seen = checks
        await wait_until(
            lambda: checks >= seen + 3, timeout=3 * reclaim_interval + MARGIN, message="the gap is not checked"
        )
        assert sample("freshviews_log_gaps_total") == gaps + 1
        assert sample("freshviews_sweeps_total", {"reason": "gap"}) == sweeps + 1
        caught_up.set()
        await wait_until(lambda: _all_read(redis, keys), timeout=MARGIN, message="the backlog was not consumed")
        seen = checks
        await wait_until(lambda: checks >= seen + 3, timeout=3 * reclaim_interval + MARGIN)
        assert sample("freshviews_log_gaps_total") == gaps + 1
    finally:
        caught_up.set()
        sub.stop()
        await asyncio.wait_for(task, timeout=MARGIN)


async def _all_read(redis: Redis, keys: Keys) -> bool:
    [group] = await redis.xinfo_groups(keys.changes)
    last = (await redis.xrevrange(keys.changes, count=1))[0][0]
    return bool(group["pending"] == 0 and group["last-delivered-id"] == last)


async def test_an_untrimmed_log_is_no_gap(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    sub = make_subscriber()
    await sub.start()
    for item in (1, 2, 3):
        await publisher.publish(item_change(item))
    assert await sub.drain() == 3
    await publisher.publish(item_change(1))
    assert await sub.consumer.reader.trimmed_gap() is None
    await redis.xtrim(keys.changes, maxlen=2, approximate=False)  # trims only what was read
    assert await sub.consumer.reader.trimmed_gap() is None
    # Trimming exactly up to the first unread change loses nothing either; Redis 7 can tell, Redis 6.2 cannot
    # and errs on the side of a sweep.
    await redis.xtrim(keys.changes, maxlen=1, approximate=False)
    version = (await redis.info("server"))["redis_version"]
    assert (await sub.consumer.reader.trimmed_gap() is None) == (int(version.split(".")[0]) >= 7)
