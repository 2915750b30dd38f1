"""The process's copies of hot values and the reads that fill them: a hit costs no Redis command, a write
replaces the copy within milliseconds, a herd of readers of a key not held costs one read (also while memory is
not trusted), and nothing older than what Redis holds is ever served from memory or shared with a later reader."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest
from redis.asyncio import Redis

from freshviews.core.keys import Keys
from freshviews.serving import Snapshot
from freshviews.serving.memory import Memory
from tests.support.helpers import wait_until
from tests.support.serving import OpenClient, put, serving_of


async def _redis_reads(redis: Redis, names: Sequence[str] = ("hget", "hmget")) -> int:
    stats = await redis.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in names)


# -- over HTTP, on the session Redis ---------------------------------------------------------------------------


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


async def test_a_herd_of_readers_of_a_key_not_in_memory_costs_one_read(
    open_client: OpenClient, redis: Redis, keys: Keys
) -> None:
    client, _ = await open_client()
    value = {"pad": "x" * 100_000}
    version = await put(redis, keys, "item/1", value)
    await redis.config_resetstat()
    responses = await asyncio.gather(*(client.get("/cache/item/1") for _ in range(200)))
    assert {r.status_code for r in responses} == {200}
    assert all(json.loads(r.content) == value and r.headers["etag"] == f'"{version}"' for r in responses)
    assert await _redis_reads(redis, ["hmget"]) == 1


async def test_a_reader_that_gives_up_fails_no_other(open_client: OpenClient, redis: Redis, keys: Keys) -> None:
    _, app = await open_client()
    memory = serving_of(app).memory
    version = await put(redis, keys, "item/1", {"id": 1})
    await redis.config_resetstat()
    first = asyncio.create_task(memory.read(["item/1"]))
    await asyncio.sleep(0)  # the first reader has started the read
    second = asyncio.create_task(memory.read(["item/1", "item/2"]))
    await asyncio.sleep(0)
    first.cancel()
    shared, absent = await second
    assert shared is not None
    assert shared.version == version
    assert json.loads(shared.data or b"") == {"id": 1}
    assert absent is None
    assert first.cancelled()
    assert await _redis_reads(redis, ["hmget"]) == 2  # item/1 once for both readers, item/2 on its own


async def test_readers_of_a_read_cancelled_at_shutdown_do_not_wait_forever(
    open_client: OpenClient, redis: Redis, keys: Keys
) -> None:
    _, app = await open_client()
    memory = serving_of(app).memory
    await put(redis, keys, "item/1", {"id": 1})
    reader = asyncio.create_task(memory.read(["item/1"]))
    await asyncio.sleep(0)  # the reader has started a read task, which has not run yet
    await memory.aclose()
    done, _ = await asyncio.wait({reader}, timeout=2)
    assert done, "the reader still waits on a read that was cancelled"
    assert reader.cancelled()


# -- the rules, against a hub and a Redis played by the test ---------------------------------------------------


class FakeHub:
    """The two things memory asks of the hub: whether it is live, and to be told of what it hears."""

    def __init__(self) -> None:
        self.live = True

    def add_listener(self, listener: Any) -> None:
        pass


class FakeRedis:
    """Reads that take what Redis holds when they arrive, and land only when the test lets them."""

    def __init__(self) -> None:
        self.values: dict[str, Snapshot] = {}
        self.reads: list[asyncio.Event] = []

    async def read(self, view_keys: Sequence[str]) -> list[Snapshot | None]:
        reply = [self.values.get(key) for key in view_keys]
        landed = asyncio.Event()
        self.reads.append(landed)
        await landed.wait()
        return reply

    async def started(self, count: int) -> None:
        await wait_until(lambda: len(self.reads) >= count, 2, message=f"{count} reads did not start")


def _snap(key: str, version: int) -> Snapshot:
    return Snapshot(key, version, b"{}", version)


def _memory(capacity: int = 10) -> tuple[Memory, FakeHub, FakeRedis]:
    hub, redis = FakeHub(), FakeRedis()
    return Memory(capacity, hub, redis.read), hub, redis  # type: ignore[arg-type]


async def test_a_read_in_flight_when_a_newer_version_is_announced_is_neither_kept_nor_shared() -> None:
    memory, _, redis = _memory()
    redis.values["k"] = _snap("k", 100)
    old = asyncio.create_task(memory.read(["k"]))
    await redis.started(1)
    # A write lands while the read is on its way back with version 100.
    redis.values["k"] = _snap("k", 200)
    memory.announced("k", 200)
    new = asyncio.create_task(memory.read(["k"]))  # does not join the read that may predate the write
    await redis.started(2)
    redis.reads[0].set()
    assert await old == [_snap("k", 100)]  # its own reader gets it, as a read of its own would
    assert memory.get("k") is None  # but it is not kept
    redis.reads[1].set()
    assert await new == [_snap("k", 200)]
    assert memory.get("k") == _snap("k", 200)
    # Never backwards: a read past memory (as min_version makes) that returns an older fence changes nothing.
    redis.values["k"] = _snap("k", 150)
    past = asyncio.create_task(memory.read(["k"], copies=False))
    await redis.started(3)
    redis.reads[2].set()
    assert await past == [_snap("k", 150)]
    assert memory.get("k") == _snap("k", 200)
    memory.announced("k", 300)
    assert memory.get("k") is None


async def test_a_read_that_already_got_the_announced_version_is_kept() -> None:
    memory, _, redis = _memory()
    redis.values["k"] = _snap("k", 200)
    reader = asyncio.create_task(memory.read(["k"]))
    await redis.started(1)
    memory.announced("k", 200)  # the notification of the write the read already saw, arriving late
    redis.reads[0].set()
    await reader
    assert memory.get("k") == _snap("k", 200)


async def test_copies_are_used_only_while_the_subscription_is_live() -> None:
    memory, hub, redis = _memory()
    redis.values["k"] = _snap("k", 1)
    hub.live = False
    reader = asyncio.create_task(memory.read(["k"]))
    await redis.started(1)
    redis.reads[0].set()
    await reader
    assert len(memory) == 0  # read while announcements were not heard: not kept
    hub.live = True
    reader = asyncio.create_task(memory.read(["k"]))
    await redis.started(2)
    redis.reads[1].set()
    await reader
    assert memory.get("k") == _snap("k", 1)
    hub.live = False  # a silent link: nothing heard for a while
    assert memory.get("k") is None
    hub.live = True
    memory.lost()
    assert memory.get("k") is None  # a lost subscription forgets everything


async def test_a_read_begun_before_the_subscription_was_remade_is_not_kept() -> None:
    memory, _, redis = _memory()
    redis.values["k"] = _snap("k", 1)
    reader = asyncio.create_task(memory.read(["k"]))
    await redis.started(1)
    memory.lost()
    memory.subscribed()  # what was announced in between is lost: the read may predate it
    later = asyncio.create_task(memory.read(["k"]))
    await redis.started(2)  # a read of its own, not the one in flight
    redis.reads[0].set()
    await reader
    assert len(memory) == 0
    redis.reads[1].set()
    await later
    assert memory.get("k") == _snap("k", 1)  # the read begun under the new subscription is kept


async def test_a_herd_shares_one_read_even_while_memory_is_not_trusted_but_not_with_memory_off() -> None:
    for capacity, expected_reads in ((10, 1), (0, 20)):
        memory, hub, redis = _memory(capacity)
        redis.values["k"] = _snap("k", 1)
        # A busy loop answered the pings late: memory is not trusted, but a read in flight is a deadline old.
        hub.live = False
        readers = [asyncio.create_task(memory.read(["k"])) for _ in range(20)]
        await redis.started(expected_reads)  # by then every reader has started or joined a read
        assert len(redis.reads) == expected_reads, capacity
        for landed in redis.reads:
            landed.set()
        assert await asyncio.gather(*readers) == [[_snap("k", 1)]] * 20


async def test_the_least_recently_used_copies_go_first() -> None:
    memory, _, redis = _memory(capacity=2)
    for key in ("a", "b", "c"):
        redis.values[key] = _snap(key, 1)

    async def read(key: str) -> None:
        reader = asyncio.create_task(memory.read([key]))
        await redis.started(len(redis.reads) + 1)
        redis.reads[-1].set()
        await reader

    await read("a")
    await read("b")
    memory.get("a")
    await read("c")
    assert (memory.get("a") is not None, memory.get("b"), memory.get("c") is not None) == (True, None, True)
    assert len(memory) == 2


def test_a_negative_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        _memory(capacity=-1)
