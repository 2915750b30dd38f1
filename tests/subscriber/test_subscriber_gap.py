"""A change log trimmed past changes the group never read: detected once, counted, repaired by a sweep."""

from __future__ import annotations

import asyncio
import json

from helpers import wait_until
from redis.asyncio import Redis
from subscriber_support import MakeSubscriber, cached, item_change, sample
from toy_subscriber_views import World

from freshviews.core.keys import DATA, Keys
from freshviews.publish.publisher import Publisher


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
    sub = make_subscriber(consumer="c2", reclaim_interval=0.05)
    task = asyncio.create_task(sub.run())
    try:
        await wait_until(
            lambda: sample("freshviews_sweeps_total", {"reason": "gap"}) > sweeps, timeout=5, message="no gap sweep"
        )
        assert await _name(redis, keys, 2) == "renamed while down"
        # Several reclaim rounds later the same hole is not reported again.
        await asyncio.sleep(0.3)
        assert sample("freshviews_log_gaps_total") == gaps + 1
    finally:
        sub.stop()
        await asyncio.wait_for(task, timeout=5)


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
