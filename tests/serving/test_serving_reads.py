"""Reads from Redis are shared: a herd of readers of a key not held in memory costs one round trip (also while
memory is not trusted), a reader never joins a read that may predate a write announced before it came, and one
that gives up fails no other."""

from __future__ import annotations

import asyncio
import json

from redis.asyncio import Redis
from serving_support import OpenClient, put, serving_of

from freshviews.core.keys import Keys
from freshviews.serving.hub import Snapshot
from freshviews.serving.memory import NearCache


async def _hmgets(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_hmget", {}).get("calls", 0))


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
    assert await _hmgets(redis) == 1


async def test_a_reader_that_gives_up_fails_no_other(open_client: OpenClient, redis: Redis, keys: Keys) -> None:
    _, app = await open_client()
    reads = serving_of(app).reads
    version = await put(redis, keys, "item/1", {"id": 1})
    await redis.config_resetstat()
    first = asyncio.create_task(reads.read(["item/1"]))
    await asyncio.sleep(0)  # the first reader has started the read
    second = asyncio.create_task(reads.read(["item/1", "item/2"]))
    await asyncio.sleep(0)
    first.cancel()
    shared, absent = await second
    assert shared is not None
    assert shared.version == version
    assert json.loads(shared.data or b"") == {"id": 1}
    assert absent is None
    assert first.cancelled()
    assert await _hmgets(redis) == 2  # item/1 once for both readers, item/2 on its own


async def test_readers_of_a_read_cancelled_at_shutdown_do_not_wait_forever(
    open_client: OpenClient, redis: Redis, keys: Keys
) -> None:
    _, app = await open_client()
    reads = serving_of(app).reads
    await put(redis, keys, "item/1", {"id": 1})
    reader = asyncio.create_task(reads.read(["item/1"]))
    await asyncio.sleep(0)  # the reader has started a read task, which has not run yet
    await reads.aclose()
    done, _ = await asyncio.wait({reader}, timeout=2)
    assert done, "the reader still waits on a read that was cancelled"
    assert reader.cancelled()


def _pending() -> asyncio.Future[Snapshot | None]:
    return asyncio.get_running_loop().create_future()


async def test_a_read_is_shared_only_until_a_newer_version_is_announced() -> None:
    near = NearCache(10)
    near.connected()
    read = _pending()
    near.share("k", read)
    assert near.joinable("k") is read
    near.announced("k", 200)  # the read may have reached Redis before this write: a later reader reads anew
    assert near.joinable("k") is None
    again = _pending()
    near.share("k", again)
    read.set_result(None)  # the older read finishing does not withdraw the newer one
    await asyncio.sleep(0)
    assert near.joinable("k") is again
    again.set_result(None)
    await asyncio.sleep(0)
    assert near.joinable("k") is None


async def test_reads_are_shared_while_memory_is_not_trusted_but_not_with_memory_off() -> None:
    heard = True
    near = NearCache(10, live=lambda: heard)
    near.connected()
    read = _pending()
    near.share("k", read)
    # A busy loop answered the pings late: memory is off, but a read in flight is at most a deadline old.
    heard = False
    assert near.get("k") is None
    assert near.joinable("k") is read
    near.disconnected()
    near.connected()
    assert near.joinable("k") is None  # a remade subscription starts afresh
    off = NearCache(0)
    off.connected()
    off.share("k", _pending())
    assert off.joinable("k") is None  # cache_memory_keys=0: every read goes to Redis on its own
