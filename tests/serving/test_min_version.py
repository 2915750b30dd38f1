"""Read-your-writes: ``?min_version=`` waits (briefly) until the cache reflects a recompute started at or after V."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from freshviews.core.events import Change, Operation
from freshviews.core.keys import Keys
from freshviews.publish.publisher import Publisher
from freshviews.serving.routes import parse_min_version
from freshviews.worker.store import CacheStore, PendingWrite
from tests.support.helpers import wait_until
from tests.support.serving import OpenClient, StartSubscriber, put, serving_of
from tests.support.world import World

#: How long a read waits for its version here (cache_min_version_wait): the promise the waits below rely on.
WAIT = 3.0


async def _waiting(redis: Redis, app: FastAPI) -> None:
    """Return once the reader is waiting: it watches the key and has read the fence that is not enough yet
    (Redis's command counters were reset before it began)."""

    async def read_once() -> bool:
        stats = await redis.info("commandstats")
        return serving_of(app).hub.mailboxes == 1 and int(stats.get("cmdstat_hmget", {}).get("calls", 0)) >= 1

    # Within the reader's own wait: a reader that is not waiting by then has given up already.
    await wait_until(read_once, WAIT, message="the reader did not start waiting")


async def test_the_read_waits_for_a_write_that_lands_later(open_client: OpenClient, redis: Redis, keys: Keys) -> None:
    client, app = await open_client(cache_min_version_wait=WAIT)
    old = await put(redis, keys, "item/1", {"v": 1})
    await redis.config_resetstat()
    reader = asyncio.create_task(client.get("/cache/item/1", params={"min_version": old + 1}))
    await _waiting(redis, app)
    new = await put(redis, keys, "item/1", {"v": 2})
    response = await reader
    assert response.status_code == 200
    assert response.json() == {"v": 2}
    assert response.headers["etag"] == f'"{new}"'


async def test_a_version_already_reached_answers_at_once(open_client: OpenClient, redis: Redis, keys: Keys) -> None:
    client, _ = await open_client(cache_min_version_wait=WAIT)
    version = await put(redis, keys, "item/1", {"v": 1})
    response = await client.get("/cache/item/1", params={"min_version": version})
    assert response.status_code == 200
    # With If-None-Match too: the reader already holds a version that is fresh enough.
    response = await client.get(
        "/cache/item/1", params={"min_version": version}, headers={"If-None-Match": f'"{version}"'}
    )
    assert response.status_code == 304


async def test_a_recompute_that_left_the_value_unchanged_satisfies_it(
    open_client: OpenClient, redis: Redis, keys: Keys
) -> None:
    client, app = await open_client(cache_min_version_wait=WAIT)
    version = await put(redis, keys, "item/1", {"v": 1})
    store = CacheStore(redis, keys)
    await redis.config_resetstat()
    reader = asyncio.create_task(client.get("/cache/item/1", params={"min_version": version + 1}))
    await _waiting(redis, app)
    (ticket,) = await store.tickets(["item/1"])
    await store.write([PendingWrite("item/1", ticket, json.dumps({"v": 1}).encode())])
    response = await reader
    # The write moved only the fence (no new version, no notification), and that is enough: the cache
    # reflects a recompute started after the reader's write.
    assert ticket > version
    assert response.status_code == 200
    assert response.headers["etag"] == f'"{version}"'


async def test_a_version_not_reached_in_time_is_503_with_retry_after(
    open_client: OpenClient, redis: Redis, keys: Keys
) -> None:
    client, _ = await open_client(cache_min_version_wait=0.3)
    version = await put(redis, keys, "item/1", {"v": 1})
    response = await client.get("/cache/item/1", params={"min_version": version + 10_000_000})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert f"version {version}" in response.json()["detail"]


@pytest.mark.parametrize("bad", ["abc", "-1", "1.5", "12-", "1-2-3", "9" * 30, "1\r\n"])
async def test_a_malformed_min_version_is_422(open_client: OpenClient, bad: str) -> None:
    client, _ = await open_client()
    response = await client.get("/cache/item/1", params={"min_version": bad})
    assert response.status_code == 422


def test_a_change_id_means_from_its_millisecond() -> None:
    assert parse_min_version("1732870000000-7") == 1_732_870_000_000_000
    assert parse_min_version("42") == 42


async def test_read_your_writes_with_the_change_id_a_write_returned(
    open_client: OpenClient, start_subscriber: StartSubscriber, redis: Redis, keys: Keys, world: World
) -> None:
    """The whole contract: commit, publish, take the change id, read with it: the value includes the write."""
    await start_subscriber()
    client, _ = await open_client(cache_min_version_wait=5.0, cache_miss_wait=3.0)
    assert (await client.get("/cache/item/1")).json()["name"] == "item 1"  # cached by a refresh
    publisher = Publisher(redis, keys, timeout=5.0)
    for round_ in range(5):
        world.items[1]["name"] = f"renamed {round_}"  # the commit
        (change_id,) = await publisher.publish(Change(entity="item", id="1", op=Operation.UPDATE))
        response = await client.get("/cache/item/1", params={"min_version": change_id})
        assert response.status_code == 200, (change_id, response.text)
        assert response.json()["name"] == f"renamed {round_}"
