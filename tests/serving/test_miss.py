"""A valid key that is not cached: the route asks the subscribers (one request per key per process, however many
readers miss it) and waits briefly; it never computes the view itself."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from freshviews.core.keys import Keys
from tests.support.serving import OpenClient, StartSubscriber, serving_of
from tests.support.world import World


async def test_a_thousand_concurrent_misses_make_one_request_and_get_503_with_retry_after(
    open_client: OpenClient, redis: Redis, keys: Keys, world: World
) -> None:
    # A generous Redis deadline: this test is about single flight, and a thousand reads queue for the
    # connection slots (cache_redis_concurrency) on a loaded test machine.
    client, app = await open_client(cache_miss_wait=0.5, cache_retry_after=3, cache_redis_timeout=10)
    started = time.monotonic()
    responses = await asyncio.gather(*(client.get("/cache/item/1") for _ in range(1000)))
    elapsed = time.monotonic() - started
    assert {r.status_code for r in responses} == {503}
    assert {r.headers["retry-after"] for r in responses} == {"3"}
    assert "not cached yet" in responses[0].json()["detail"]
    assert await redis.xlen(keys.refresh) == 1  # ONE refresh request for a thousand readers
    assert world.computes["item/1"] == 0  # and the route computed nothing itself
    assert elapsed < 15, f"1000 misses took {elapsed:.1f}s"
    assert serving_of(app).refresher.pending == 0  # nothing left in flight


async def test_a_miss_is_computed_by_the_subscriber_once_and_returned(
    open_client: OpenClient, start_subscriber: StartSubscriber, redis: Redis, keys: Keys, world: World
) -> None:
    await start_subscriber()
    client, _ = await open_client(cache_miss_wait=3.0, cache_redis_timeout=5)
    responses = await asyncio.gather(*(client.get("/cache/item/2") for _ in range(200)))
    assert {r.status_code for r in responses} == {200}, {r.text for r in responses}
    assert responses[0].json() == {"id": 2, "name": "item 2", "color": "blue"}
    assert len({r.headers["etag"] for r in responses}) == 1
    assert world.computes["item/2"] == 1
    assert await redis.xlen(keys.refresh) == 1
    # Later reads are plain hits.
    assert (await client.get("/cache/item/2")).status_code == 200
    assert world.computes["item/2"] == 1


async def test_a_miss_on_a_row_that_does_not_exist_ends_as_404(
    open_client: OpenClient, start_subscriber: StartSubscriber, redis: Redis, keys: Keys, world: World
) -> None:
    await start_subscriber()
    client, _ = await open_client(cache_miss_wait=3.0)
    response = await client.get("/cache/item/999")
    assert response.status_code == 404
    assert world.computes["item/999"] == 1
    # The tombstone answers from now on; no further request reaches the subscribers.
    assert (await client.get("/cache/item/999")).status_code == 404
    assert await redis.xlen(keys.refresh) == 1


async def test_misses_of_distinct_keys_are_capped_per_process(
    open_client: OpenClient, redis: Redis, keys: Keys
) -> None:
    client, _ = await open_client(cache_miss_wait=0.5, cache_miss_max_pending=2)
    responses = await asyncio.gather(*(client.get(f"/cache/item/{i}") for i in range(1, 6)))
    assert {r.status_code for r in responses} == {503}
    assert all("retry-after" in r.headers for r in responses)
    assert await redis.xlen(keys.refresh) == 2  # the other three readers were refused without a request
