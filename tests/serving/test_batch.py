"""GET /cache?key=a&key=b: one Redis round trip, stored bytes embedded as they are, each key answered on its own."""

from __future__ import annotations

import json

from redis.asyncio import Redis

from freshviews.core.embedded import EmbeddedRedis
from freshviews.core.keys import Keys
from tests.support.proxy import FaultProxy
from tests.support.serving import OpenClient, put

ODD_BYTES = b'{ "z" : 1,\t"a":"caf\\u00e9" }'


async def test_values_and_versions_of_every_key_with_the_stored_bytes_embedded(
    open_client: OpenClient, redis: Redis, keys: Keys
) -> None:
    client, _ = await open_client()
    v1 = await put(redis, keys, "item/1", ODD_BYTES)
    v2 = await put(redis, keys, "color/red", {"color": "red", "ids": [3]})
    response = await client.get("/cache", params=[("key", "item/1"), ("key", "color/red")])
    assert response.status_code == 200
    # The stored bytes appear verbatim inside the answer: concatenated, not decoded and re-encoded.
    assert b'"data":' + ODD_BYTES in response.content
    assert response.json() == {
        "items": {
            "item/1": {"status": 200, "version": v1, "data": json.loads(ODD_BYTES)},
            "color/red": {"status": 200, "version": v2, "data": {"color": "red", "ids": [3]}},
        }
    }
    assert list(response.json()["items"]) == ["item/1", "color/red"]  # the order asked
    assert response.headers["cache-control"] == "public, max-age=1"  # the shortest of the views asked


async def test_bad_and_missing_keys_are_reported_per_key(open_client: OpenClient, redis: Redis, keys: Keys) -> None:
    client, _ = await open_client(cache_miss_wait=0.1)
    version = await put(redis, keys, "item/1", {"id": 1})
    await put(redis, keys, "item/2", {"id": 2})
    await put(redis, keys, "item/2", None)
    asked = ["item/1", "nope/1", "item/x", "item/2", "item/3", "item/1", "item/" + "9" * 10_000]
    response = await client.get("/cache", params=[("key", k) for k in asked])
    assert response.status_code == 200
    items = response.json()["items"]
    assert list(items) == ["item/1", "nope/1", "item/x", "item/2", "item/3", "item/" + "9" * 10_000]
    assert items["item/1"] == {"status": 200, "version": version, "data": {"id": 1}}
    assert items["nope/1"]["status"] == 404
    assert items["item/x"]["status"] == 422
    assert "canonical integer" in items["item/x"]["detail"]
    assert items["item/2"]["status"] == 404  # deleted
    assert items["item/3"]["status"] == 503  # valid, not cached: requested from the subscribers
    assert items["item/" + "9" * 10_000]["status"] == 422
    assert await redis.xlen(keys.refresh) == 1


async def test_the_number_of_keys_is_capped(open_client: OpenClient) -> None:
    client, _ = await open_client(cache_batch_max_keys=3)
    response = await client.get("/cache", params=[("key", f"item/{i}") for i in range(1, 5)])
    assert response.status_code == 400
    assert "at most 3 keys" in response.json()["detail"]
    assert (await client.get("/cache")).status_code == 422  # no key at all


async def test_a_batch_costs_one_round_trip(
    open_client: OpenClient, redis: Redis, keys: Keys, redis_server: EmbeddedRedis
) -> None:
    proxy = FaultProxy(redis_server.port)
    url = await proxy.start()
    try:
        client, _ = await open_client(url=url)
        wanted = [f"item/{i}" for i in range(1, 41)]
        for key in [*wanted, "item/100"]:
            await put(redis, keys, key, {"k": key})
        await client.get("/cache", params={"key": "item/100"})  # the app's connection is open now
        before = proxy.client_writes
        response = await client.get("/cache", params=[("key", k) for k in wanted])
        assert response.status_code == 200
        assert {item["status"] for item in response.json()["items"].values()} == {200}
        assert len(response.json()["items"]) == 40
        assert proxy.client_writes - before == 1
        # Read again, the values come from memory: no read of Redis at all.
        await redis.config_resetstat()
        assert (await client.get("/cache", params=[("key", k) for k in wanted])).json() == response.json()
        assert "cmdstat_hmget" not in await redis.info("commandstats")
    finally:
        await proxy.close()
