"""FastReads answers hot keys before routing, with the answer the route builds; everything else reaches the route."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from redis.asyncio import Redis

from freshviews.core.keys import Keys
from freshviews.serving import ServingSettings, runtime
from tests.support.metrics import sample
from tests.support.serving import FAST, build_app, put
from tests.support.world import serving_registry


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """The same app twice: mounted with the middleware, and the routes alone."""
    fast = build_app(serving_registry, redis_url, ServingSettings(**FAST))
    plain = build_app(serving_registry, redis_url, ServingSettings(**FAST), fast_path=False)
    async with (
        LifespanManager(fast) as fast_app,
        LifespanManager(plain) as plain_app,
        httpx.AsyncClient(transport=httpx.ASGITransport(fast_app.app), base_url="http://t") as with_fast,
        httpx.AsyncClient(transport=httpx.ASGITransport(plain_app.app), base_url="http://t") as without,
    ):
        yield with_fast, without


def _fast(status: str) -> float:
    return sample("freshviews_fast_reads_total", {"status": status})


async def test_a_hot_key_gets_the_routes_answer_without_the_route(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], redis: Redis, keys: Keys
) -> None:
    fast, plain = clients
    version = await put(redis, keys, "item/1", b'{ "odd" :  "bytes" }')
    await fast.get("/cache/item/1")  # the route reads Redis and keeps the value in memory
    await plain.get("/cache/item/1")
    before = _fast("200"), _fast("304")
    answers = [await client.get("/cache/item/1") for client in (fast, plain)]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].content == answers[1].content == b'{ "odd" :  "bytes" }'
    assert answers[0].headers.multi_items() == answers[1].headers.multi_items()
    assert answers[0].headers["etag"] == f'"{version}"'
    not_modified = [
        await client.get("/cache/item/1", headers={"If-None-Match": f'W/"{version}"'}) for client in (fast, plain)
    ]
    assert [r.status_code for r in not_modified] == [304, 304]
    assert not_modified[0].content == b""
    assert not_modified[0].headers.multi_items() == not_modified[1].headers.multi_items()
    assert (_fast("200"), _fast("304")) == (before[0] + 1, before[1] + 1)  # both answered before routing


async def test_the_route_and_the_fast_path_send_what_one_builder_makes(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, plain = clients
    built = runtime.answer_of  # type: ignore[attr-defined]  # patched where the runtime looks it up

    def marked(*args: Any, **kwargs: Any) -> Any:
        response = built(*args, **kwargs)
        response.headers["x-built-by"] = "answer_of"
        return response

    monkeypatch.setattr(runtime, "answer_of", marked)
    await put(redis, keys, "item/1", {"id": 1})
    await fast.get("/cache/item/1")  # now in memory
    before = _fast("200")
    from_memory, routed = await fast.get("/cache/item/1"), await plain.get("/cache/item/1")
    assert _fast("200") == before + 1  # the first one never reached the route
    assert from_memory.headers["x-built-by"] == routed.headers["x-built-by"] == "answer_of"


@pytest.mark.parametrize(
    "path",
    ["/cache/item/2", "/cache/item/abc", "/cache/nope/1", "/cache/item/1?min_version=1", "/cache/views"],
)
async def test_anything_else_gets_exactly_the_routes_answer(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], redis: Redis, keys: Keys, path: str
) -> None:
    fast, plain = clients
    await put(redis, keys, "item/1", {"id": 1})
    answered = _fast("200")
    with_fast, without = await fast.get(path), await plain.get(path)
    assert _fast("200") == answered
    assert with_fast.status_code == without.status_code
    assert with_fast.json() == without.json()


async def test_a_deleted_key_held_in_memory_gets_the_routes_404(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], redis: Redis, keys: Keys
) -> None:
    fast, plain = clients
    await put(redis, keys, "item/1", {"id": 1})
    await put(redis, keys, "item/1", None)
    await fast.get("/cache/item/1")
    answered = _fast("404")
    response, routed = await fast.get("/cache/item/1"), await plain.get("/cache/item/1")
    assert _fast("404") == answered + 1
    assert response.status_code == routed.status_code == 404
    assert "no longer exists" in response.json()["detail"]
    assert response.json() == routed.json()
