"""GET /cache/{key}: stored bytes as they are, ETag from the version, per-view Cache-Control, 304 on one small
read, and every bad key refused with its reason before anything reaches Redis."""

from __future__ import annotations

from dataclasses import replace

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from freshviews.core import PK, Int, On, Registry, View
from freshviews.core.keys import Keys
from freshviews.serving import cache_router
from tests.support.serving import OpenClient, put
from tests.support.world import serving_registry

# Valid JSON, but not what any encoder in this process would produce: spacing, key order, an escape.
ODD_BYTES = b'{ "z" : 1,\t"a":"caf\\u00e9",  "n": [1.50, 2e3] }'


async def test_stored_bytes_are_returned_unchanged_with_etag_and_cache_control(
    open_client: OpenClient, redis: Redis, keys: Keys
) -> None:
    client, _ = await open_client()
    version = await put(redis, keys, "item/1", ODD_BYTES)
    response = await client.get("/cache/item/1")
    assert response.status_code == 200
    assert response.content == ODD_BYTES
    assert response.headers["content-type"] == "application/json"
    assert response.headers["etag"] == f'"{version}"'
    assert response.headers["cache-control"] == "public, max-age=5, stale-while-revalidate=60"


async def test_a_matching_if_none_match_is_a_304_from_one_small_read(
    open_client: OpenClient, redis: Redis, keys: Keys
) -> None:
    client, _ = await open_client()
    version = await put(redis, keys, "item/1", {"id": 1})
    await redis.config_resetstat()
    response = await client.get("/cache/item/1", headers={"If-None-Match": f'"1", W/"{version}"'})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == f'"{version}"'
    assert response.headers["cache-control"] == "public, max-age=5, stale-while-revalidate=60"
    stats = await redis.info("commandstats")
    # One HGET of the version field; the value itself (HMGET) is never read.
    assert stats["cmdstat_hget"]["calls"] == 1
    assert "cmdstat_hmget" not in stats


async def test_a_stale_etag_gets_the_new_value(open_client: OpenClient, redis: Redis, keys: Keys) -> None:
    client, _ = await open_client()
    old = await put(redis, keys, "item/1", {"v": 1})
    new = await put(redis, keys, "item/1", {"v": 2})
    response = await client.get("/cache/item/1", headers={"If-None-Match": f'"{old}"'})
    assert response.status_code == 200
    assert response.json() == {"v": 2}
    assert response.headers["etag"] == f'"{new}"'


async def test_a_deleted_view_is_404(open_client: OpenClient, redis: Redis, keys: Keys) -> None:
    client, _ = await open_client()
    await put(redis, keys, "item/1", {"id": 1})
    await put(redis, keys, "item/1", None)
    response = await client.get("/cache/item/1")
    assert response.status_code == 404
    assert "no longer exists" in response.json()["detail"]


async def test_an_unknown_view_is_404(open_client: OpenClient) -> None:
    client, _ = await open_client()
    response = await client.get("/cache/nope/1")
    assert response.status_code == 404
    assert "no view named 'nope'" in response.json()["detail"]


@pytest.mark.parametrize(
    "path",
    [
        "item/abc",
        "item/0",
        "item/01",
        "item/%2E%2E",
        "item/..%2Fcolor%2Fred",
        "item/*",
        "item/1:2",
        "item/1%0D%0AFLUSHALL",
        "item/1%7D",
        "item/1/2",
        "color/purple",
        "item/" + "9" * 10_000,
    ],
)
async def test_bad_parameters_are_422_with_a_reason_and_never_reach_redis(
    open_client: OpenClient, redis: Redis, path: str
) -> None:
    client, _ = await open_client()
    await redis.config_resetstat()
    response = await client.get(f"/cache/{path}")
    assert response.status_code == 422, response.text
    assert response.json()["detail"]
    assert len(response.content) < 1000  # the reason quotes at most a bit of the key
    assert not any(name.startswith("cmdstat_hm") for name in await redis.info("commandstats"))


async def test_fixed_routes_are_not_taken_for_keys(open_client: OpenClient) -> None:
    client, _ = await open_client()
    views = await client.get("/cache/views")
    assert views.status_code == 200
    assert [v["template"] for v in views.json()] == ["item/{id}", "color/{color}"]
    assert all("example" not in v for v in views.json())  # neither view has one: no "example": null
    # The stream route answers for itself (a missing key parameter), not "no view named 'stream'".
    stream = await client.get("/cache/stream")
    assert stream.status_code == 422
    assert "key" in stream.text


def test_views_named_like_the_fixed_routes_are_refused() -> None:
    async def compute(ctx: object, id: int) -> dict[str, int]:
        return {"id": id}

    async def enumerate_(ctx: object) -> list[dict[str, int]]:
        return []

    clash = Registry(
        [
            View(
                template="stream/{id}",
                compute=compute,
                enumerate=enumerate_,
                depends_on=[On("x", id=PK)],
                params={"id": Int()},
            )
        ]
    )
    with pytest.raises(ValueError, match="reserved"):
        cache_router(clash)
    cache_router(serving_registry)  # the toy registry is fine


async def test_the_view_list_gives_an_example_key_where_a_view_has_one() -> None:
    with_example = replace(serving_registry.views[0], example={"id": 7})
    app = FastAPI()
    app.include_router(cache_router(Registry([with_example, serving_registry.views[1]])))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
        views = (await client.get("/cache/views")).json()
    assert views[0]["example"] == "item/7"
    assert "example" not in views[1]
    assert views[0] == {
        "template": "item/{id}",
        "example": "item/7",
        "params": {"id": "int"},
        "entities": ["item"],
        "max_age": 5,
        "stale_while_revalidate": 60,
    }
