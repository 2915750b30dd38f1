"""A key whose recompute keeps failing is backed off per key: readers get 503 with a growing Retry-After and a reason
that says the recompute fails, and the backend sees at most one recompute per backoff step, whatever the number of
readers."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from redis.asyncio import Redis

from freshviews.core.keys import FAILURE_ATTEMPTS, Keys
from freshviews.core.views import Registry
from freshviews.worker.service import Subscriber
from freshviews.worker.settings import SubscriberSettings
from tests.support.helpers import wait_until
from tests.support.serving import OpenClient
from tests.support.world import World, seeded_world, serving_registry

KEY = "item/3"
BACKOFF, BACKOFF_MAX = 1.0, 4.0
#: Readers arrive in bursts this far apart, this many at once: 1,000 GETs in all.
BURSTS, PER_BURST, EVERY = 8, 125, 1.0


class TimedWorld(World):
    """Remembers when each compute of a key ran (the loop's clock)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.when: dict[str, list[float]] = {}

    async def _passed(self, key: str, value: Any) -> Any:
        self.when.setdefault(key, []).append(asyncio.get_running_loop().time())
        return await super()._passed(key, value)


def backoff(attempts: int) -> float:
    return min(BACKOFF * 2.0 ** (attempts - 1), BACKOFF_MAX)


async def start(
    redis_url: str, world: World, registry: Registry[World], **overrides: Any
) -> tuple[Subscriber[World], Callable[[], Awaitable[None]]]:
    client = Redis.from_url(redis_url)
    settings = SubscriberSettings(
        redis_url=redis_url,
        consumer="failing-keys",
        sweep_interval=0,
        metrics_port=0,
        block_ms=50,
        refresh_backoff=BACKOFF,
        refresh_backoff_max=BACKOFF_MAX,
        **overrides,
    )
    subscriber = Subscriber(redis=client, registry=registry, ctx=world, settings=settings)
    task = asyncio.create_task(subscriber.run())
    await subscriber.wait_for_redis()

    async def stop() -> None:
        subscriber.stop()
        await asyncio.wait_for(task, 10)
        await client.aclose()

    return subscriber, stop


async def test_a_thousand_gets_of_a_failing_key_cost_one_recompute_per_backoff_step(
    open_client: OpenClient, redis_url: str, redis: Redis, keys: Keys
) -> None:
    world = TimedWorld(items=seeded_world().items)
    world.failing.add(KEY)
    _, stop = await start(redis_url, world, serving_registry)
    try:
        client, _ = await open_client(cache_miss_wait=0.5, cache_redis_timeout=5)
        seen: list[tuple[int, int, str]] = []  # (recomputes so far, Retry-After, reason) of each answer
        loop = asyncio.get_running_loop()
        began = loop.time()

        async def get() -> None:
            response = await client.get(f"/cache/{KEY}")
            assert response.status_code == 503, response.text
            seen.append((world.computes[KEY], int(response.headers["retry-after"]), response.json()["detail"]))

        for burst in range(BURSTS):
            await asyncio.gather(*(get() for _ in range(PER_BURST)))
            # Readers arriving over time: the load's shape, not a wait for a condition.
            await asyncio.sleep(max(0.0, began + (burst + 1) * EVERY - loop.time()))
        elapsed = loop.time() - began

        assert len(seen) == BURSTS * PER_BURST == 1000
        # Every answer says that the recompute fails, and why.
        assert all("its recompute fails" in detail and "source unavailable" in detail for *_, detail in seen), {
            detail for *_, detail in seen if "its recompute fails" not in detail
        }
        # At most one recompute per backoff step: each came only after the previous one's backoff ended.
        runs = world.when[KEY]
        for attempt, (earlier, later) in enumerate(itertools.pairwise(runs), start=1):
            assert later - earlier >= backoff(attempt) - 0.05, (attempt, later - earlier)
        steps, spent = 1, backoff(1)
        while spent <= elapsed:
            steps, spent = steps + 1, spent + backoff(steps + 1)
        assert 2 <= len(runs) <= steps, (len(runs), steps, elapsed)
        # Retry-After grows with the attempts: never above the current backoff, and reaching it.
        for attempts in range(1, len(runs)):
            after = [retry for recomputes, retry, _ in seen if recomputes == attempts]
            assert after, attempts
            assert max(after) == math.ceil(backoff(attempts)), (attempts, sorted(set(after)))
        print(f"1000 GETs over {elapsed:.1f}s: {len(runs)} recomputes; Retry-After {sorted({r for _, r, _ in seen})}")
    finally:
        await stop()


async def test_a_key_that_recovers_is_served_and_its_failure_forgotten(
    open_client: OpenClient, redis_url: str, redis: Redis, keys: Keys
) -> None:
    world = TimedWorld(items=seeded_world().items)
    world.failing.add(KEY)
    _, stop = await start(redis_url, world, serving_registry)
    try:
        client, _ = await open_client(cache_miss_wait=0.5, cache_redis_timeout=5)
        first = await client.get(f"/cache/{KEY}")
        assert first.status_code == 503
        assert "its recompute fails" in first.json()["detail"]
        assert await redis.hget(keys.failure(KEY), FAILURE_ATTEMPTS) == b"1"
        world.failing.discard(KEY)

        async def served() -> bool:
            return (await client.get(f"/cache/{KEY}")).status_code == 200

        # Asked again once the backoff ends (+1 s for the request's round and the margin).
        await wait_until(served, BACKOFF + 1.0 + 2.0, interval=0.05, message="the recovered key was never served")
        assert world.computes[KEY] == 2
        assert await redis.exists(keys.failure(KEY)) == 0
    finally:
        await stop()


async def test_requests_from_other_processes_within_the_backoff_cost_no_recompute(
    open_client: OpenClient, redis_url: str, redis: Redis, keys: Keys
) -> None:
    world = TimedWorld(items=seeded_world().items)
    world.failing.add(KEY)
    _, stop = await start(redis_url, world, serving_registry)
    try:
        client, _ = await open_client(cache_miss_wait=0.5, cache_redis_timeout=5)
        assert (await client.get(f"/cache/{KEY}")).status_code == 503
        # Other app processes (fresh memory each: each sends its first request, which the subscriber drops), and a
        # request added straight to the stream: none recomputes, and their readers are told at once.
        for _ in range(3):
            other, _ = await open_client(cache_miss_wait=0.2, cache_redis_timeout=5)
            response: httpx.Response = await other.get(f"/cache/{KEY}")
            assert "its recompute fails" in response.json()["detail"]
        entry_id = await redis.xadd(keys.refresh, {"key": KEY})

        async def read() -> bool:
            [group] = await redis.xinfo_groups(keys.refresh)
            return bool(group["last-delivered-id"] == entry_id and int(group["pending"]) == 0)

        await wait_until(read, 5)
        assert world.computes[KEY] == 1
    finally:
        await stop()
