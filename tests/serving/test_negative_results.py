"""Reads of valid keys that never existed: each costs at most one recompute per key per negative TTL, and their
"not found" entries take a bounded amount of Redis memory whatever readers ask for."""

from __future__ import annotations

import asyncio

import httpx
from redis.asyncio import Redis

from freshviews.core.events import Operation
from freshviews.core.keys import DIGEST, NEGATIVE, TOMBSTONE, Keys
from freshviews.publish.publisher import Publisher
from tests.support.helpers import wait_until
from tests.support.serving import OpenClient, StartSubscriber
from tests.support.world import World, item_change

#: Distinct never-existing ids each test asks for.
IDS = 10_000
#: The stated bound (README, ARCHITECTURE): Redis memory per negative entry, its record in the misses set
#: included, and per refresh request kept in the (trimmed) request stream.
BYTES_PER_NEGATIVE = 400
BYTES_PER_REQUEST = 150
#: The read side's default length of the refresh request stream.
REFRESH_MAXLEN = 10_000
BATCH = 100


def never_existing(count: int, start: int = 900_000) -> list[str]:
    return [f"item/{start + n}" for n in range(count)]


async def read_all(client: httpx.AsyncClient, view_keys: list[str]) -> dict[str, int]:
    """Every key by batch reads of ``BATCH`` keys, four at a time: each key's status."""
    statuses: dict[str, int] = {}
    limit = asyncio.Semaphore(4)

    async def one(batch: list[str]) -> None:
        async with limit:
            response = await client.get("/cache", params=[("key", key) for key in batch])
        assert response.status_code == 200, response.text
        for key, item in response.json()["items"].items():
            statuses[key] = item["status"]

    await asyncio.gather(*(one(view_keys[i : i + BATCH]) for i in range(0, len(view_keys), BATCH)))
    return statuses


async def used_memory(redis: Redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


def bound(negatives: int) -> int:
    return negatives * BYTES_PER_NEGATIVE + REFRESH_MAXLEN * BYTES_PER_REQUEST


async def test_ten_thousand_never_existing_ids_cost_one_recompute_each_and_bounded_memory(
    open_client: OpenClient, start_subscriber: StartSubscriber, redis: Redis, keys: Keys, world: World
) -> None:
    await start_subscriber()
    client, _ = await open_client(cache_miss_wait=10, cache_redis_timeout=10, cache_memory_keys=0)
    wanted = never_existing(IDS)
    before = await used_memory(redis)

    first = await read_all(client, wanted)
    assert set(first.values()) == {404}, {s: list(first.values()).count(s) for s in set(first.values())}
    recomputes = {key: world.computes[key] for key in wanted}
    assert max(recomputes.values()) == 1
    assert sum(recomputes.values()) == IDS
    # A short-lived negative entry, not a day-long tombstone.
    stored = await redis.hgetall(keys.value(wanted[0]))
    assert stored[DIGEST] == TOMBSTONE
    assert stored[NEGATIVE] == b"1"
    assert 0 < await redis.ttl(keys.value(wanted[0])) <= 60
    assert await redis.zcard(keys.misses) == IDS

    # Within the TTL, another reader (another app process: nothing in its memory) costs no recompute.
    requests = await redis.xlen(keys.refresh)
    other, _ = await open_client(cache_miss_wait=10, cache_redis_timeout=10, cache_memory_keys=0)
    second = await read_all(other, wanted)
    assert set(second.values()) == {404}
    assert sum(world.computes[key] for key in wanted) == IDS  # 0 recomputes
    assert await redis.xlen(keys.refresh) == requests  # not even a request

    grown = await used_memory(redis) - before
    print(f"used_memory grew {grown} bytes for {IDS} negative entries ({grown / IDS:.0f} per key)")
    assert grown < bound(IDS), (grown, bound(IDS))


async def test_past_the_cap_the_oldest_negative_entries_are_evicted_and_memory_stays_bounded(
    open_client: OpenClient, start_subscriber: StartSubscriber, redis: Redis, keys: Keys, world: World
) -> None:
    cap = 1_000
    await start_subscriber(negative_max=cap)
    client, _ = await open_client(cache_miss_wait=10, cache_redis_timeout=10, cache_memory_keys=0)
    wanted = never_existing(IDS)
    before = await used_memory(redis)
    statuses = await read_all(client, wanted)
    assert set(statuses.values()) == {404}
    assert max(world.computes[key] for key in wanted) == 1
    assert await redis.zcard(keys.misses) <= cap
    kept = sum([await redis.exists(keys.value(key)) for key in wanted])
    assert kept <= cap, f"{kept} negative entries kept past a cap of {cap}"
    grown = await used_memory(redis) - before
    print(f"used_memory grew {grown} bytes for {IDS} never-existing keys past a cap of {cap}")
    assert grown < bound(cap), (grown, bound(cap))


async def test_a_never_existing_key_is_recomputed_once_per_negative_ttl(
    open_client: OpenClient, start_subscriber: StartSubscriber, redis: Redis, keys: Keys, world: World
) -> None:
    ttl = 1
    await start_subscriber(negative_ttl=ttl)
    client, _ = await open_client(cache_miss_wait=5, cache_redis_timeout=5, cache_memory_keys=0)
    assert (await client.get("/cache/item/999")).status_code == 404
    for _ in range(50):
        assert (await client.get("/cache/item/999")).status_code == 404
    assert world.computes["item/999"] == 1
    # Redis's expiry is the promise: gone within the TTL (+1 s margin for its expiry cycle).
    await wait_until(lambda: _gone(redis, keys, "item/999"), ttl + 1.0, message="the negative entry outlived its TTL")
    assert (await client.get("/cache/item/999")).status_code == 404
    assert world.computes["item/999"] == 2


async def test_a_row_created_after_its_negative_entry_is_served_and_never_evicted(
    open_client: OpenClient, start_subscriber: StartSubscriber, redis: Redis, keys: Keys, world: World
) -> None:
    await start_subscriber(negative_max=2)
    client, _ = await open_client(cache_miss_wait=5, cache_redis_timeout=5, cache_memory_keys=0)
    assert (await client.get("/cache/item/77")).status_code == 404
    world.items[77] = {"id": 77, "name": "late", "color": "red"}
    await Publisher(redis, keys, timeout=5.0).publish(item_change(77, Operation.CREATE, color="red"))

    async def served() -> bool:
        return (await client.get("/cache/item/77")).status_code == 200

    await wait_until(served, 5, message="the created row never replaced its negative entry")
    assert NEGATIVE not in await redis.hgetall(keys.value("item/77"))
    assert await redis.ttl(keys.value("item/77")) == -1
    # More misses than the cap push item/77 out of the misses set: its value stays.
    for key in never_existing(5):  # one at a time: each is the newest, never evicted before it is answered
        assert (await client.get(f"/cache/{key}")).status_code == 404
    assert await redis.zscore(keys.misses, "item/77") is None
    assert (await client.get("/cache/item/77")).json()["name"] == "late"


async def _gone(redis: Redis, keys: Keys, view_key: str) -> bool:
    return await redis.exists(keys.value(view_key)) == 0
