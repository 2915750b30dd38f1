"""The process's copies of hot values: a hit costs no Redis command, a write replaces it within milliseconds,
and nothing older than what Redis holds is ever served from memory."""

from __future__ import annotations

import json

from helpers import wait_until
from redis.asyncio import Redis
from serving_support import OpenClient, put

from freshviews.core.keys import Keys
from freshviews.serving.hub import Snapshot
from freshviews.serving.memory import NearCache


async def _redis_reads(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("hget", "hmget"))


async def test_a_hot_key_is_served_from_memory_without_a_redis_command(
    open_client: OpenClient, redis: Redis, keys: Keys
) -> None:
    client, _ = await open_client()
    version = await put(redis, keys, "item/1", {"id": 1})
    assert (await client.get("/cache/item/1")).status_code == 200  # read from Redis, kept in memory
    await redis.config_resetstat()
    for _ in range(50):
        response = await client.get("/cache/item/1")
        assert response.status_code == 200
        assert response.json() == {"id": 1}
        assert response.headers["etag"] == f'"{version}"'
    not_modified = await client.get("/cache/item/1", headers={"If-None-Match": f'"{version}"'})
    assert not_modified.status_code == 304
    assert await _redis_reads(redis) == 0


async def test_a_write_replaces_the_copy_at_once(open_client: OpenClient, redis: Redis, keys: Keys) -> None:
    client, _ = await open_client()
    await put(redis, keys, "item/1", {"v": 1})
    assert (await client.get("/cache/item/1")).json() == {"v": 1}
    new = await put(redis, keys, "item/1", {"v": 2})

    async def fresh() -> bool:
        response = await client.get("/cache/item/1")
        return bool(response.headers["etag"] == f'"{new}"' and json.loads(response.content) == {"v": 2})

    await wait_until(fresh, timeout=0.5, interval=0.005, message="the old copy outlived the write")


async def test_memory_off_means_every_read_goes_to_redis(open_client: OpenClient, redis: Redis, keys: Keys) -> None:
    client, _ = await open_client(cache_memory_keys=0)
    await put(redis, keys, "item/1", {"id": 1})
    await redis.config_resetstat()
    for _ in range(5):
        assert (await client.get("/cache/item/1")).status_code == 200
    assert await _redis_reads(redis) == 5


def _snap(key: str, version: int) -> Snapshot:
    return Snapshot(key, version, b"{}", version)


def test_a_read_in_flight_does_not_park_a_value_older_than_an_announced_one() -> None:
    near = NearCache(10)
    near.connected()
    near.reading("k")
    near.announced("k", 200)  # a write landed while our read was on its way back with version 100
    near.offer(_snap("k", 100))
    assert near.get("k") is None
    near.reading("k")
    near.offer(_snap("k", 200))
    assert near.get("k") == _snap("k", 200)
    near.put(_snap("k", 150))  # never backwards
    assert near.get("k") == _snap("k", 200)
    near.announced("k", 300)
    assert near.get("k") is None


def test_copies_are_forgotten_when_announcements_may_have_been_missed() -> None:
    heard = True
    near = NearCache(10, live=lambda: heard)
    near.put(_snap("k", 1))
    assert near.get("k") is None  # not connected yet
    near.connected()
    near.put(_snap("k", 1))
    assert near.get("k") is not None
    heard = False  # a silent link: nothing heard for a while
    assert near.get("k") is None
    heard = True
    near.disconnected()
    near.connected()
    assert near.get("k") is None  # a new subscription starts empty


def test_the_least_recently_used_copies_go_first() -> None:
    near = NearCache(2)
    near.connected()
    for key in ("a", "b"):
        near.put(_snap(key, 1))
    near.get("a")
    near.put(_snap("c", 1))
    assert (near.get("a") is not None, near.get("b"), near.get("c") is not None) == (True, None, True)
    assert len(near) == 2
