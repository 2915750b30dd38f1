"""``freshviews serve`` puts deadlines on reading a request (its head, its body) and refuses oversized heads; the read
routes ignore an If-None-Match too long to be a client's. Raw sockets against a real uvicorn: the scoreboard under
``freshviews serve`` as a process, and the read routes under uvicorn in this process (for the If-None-Match cases)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from freshviews.core.embedded import EmbeddedRedis
from freshviews.core.keys import Keys
from freshviews.serving import ServingSettings
from tests.support.helpers import BUSY_MARGIN
from tests.support.rawhttp import exchange
from tests.support.serving import build_app, live_server, put
from tests.support.stack import Stack
from tests.support.world import serving_registry

#: The deadlines the served process runs with (FRESHVIEWS_REQUEST_HEAD_TIMEOUT / _BODY_TIMEOUT), seconds.
HEAD, BODY = 1.0, 1.5
#: What a deadline may be late by: the event loop's timer on a loaded machine, and the client seeing the close
#: (without a deadline the connection would stay open for good).
MARGIN = BUSY_MARGIN
#: Slowloris connections held at once.
SLOWLORIS = 40


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis) -> Iterator[Stack]:
    """The scoreboard under ``freshviews serve`` (a process), with short request deadlines."""
    tmp = tmp_path_factory.mktemp("serve-deadlines")
    stack = Stack(
        tmp,
        redis_server.url,
        f"sqlite+aiosqlite:///{tmp / 'scoreboard.db'}",
        extra_env={
            "FRESHVIEWS_REQUEST_HEAD_TIMEOUT": str(HEAD),
            "FRESHVIEWS_REQUEST_BODY_TIMEOUT": str(BODY),
            "APP_SEED_PLAYERS": "20",
            "APP_SEED_TEAMS": "4",
            "APP_SEED_SCORES": "40",
        },
    )
    try:
        stack.start_app()
        yield stack
    finally:
        stack.stop()
        print(stack.logs())


def port_of(stack: Stack) -> int:
    return stack.app_port


async def test_slowloris_connections_are_closed_after_the_head_deadline(served: Stack) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n"
    results = await asyncio.gather(
        *(exchange(port_of(served), head, trickle=b"X-Slow: 1\r\n") for _ in range(SLOWLORIS))
    )
    lasted = sorted(seconds for seconds, _ in results)
    assert lasted[-1] <= HEAD + MARGIN, lasted
    assert lasted[0] >= HEAD * 0.9, lasted  # the deadline, not something else, closed them
    assert all(received.startswith(b"HTTP/1.1 408") for _, received in results)
    print(f"{SLOWLORIS} slowloris connections closed after {lasted[0]:.2f}-{lasted[-1]:.2f}s (head deadline {HEAD}s)")
    async with httpx.AsyncClient(base_url=served.base_url) as client:
        assert (await client.get("/healthz")).status_code == 200


@pytest.mark.parametrize("first", [b"", b"GET /heal", b"GET /healthz HTTP/1.1\r\nHost: local"])
async def test_silent_and_half_sent_heads_are_closed_after_the_head_deadline(served: Stack, first: bytes) -> None:
    lasted, received = await exchange(port_of(served), first)
    assert HEAD * 0.9 <= lasted <= HEAD + MARGIN, lasted
    assert received.startswith(b"HTTP/1.1 408")


@pytest.mark.parametrize("trickle", [b"", b"x"])
async def test_half_sent_bodies_are_closed_after_the_body_deadline(served: Stack, trickle: bytes) -> None:
    head = (
        b"POST /api/teams HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    lasted, received = await exchange(port_of(served), head + b'{"name": "sl', trickle=trickle)
    assert BODY * 0.9 <= lasted <= BODY + MARGIN, lasted
    # The app was still reading the body: no answer had begun, so the deadline's own 408 is all there is.
    assert received.startswith(b"HTTP/1.1 408"), received[:200]


async def test_a_1_mb_header_is_refused_with_431_at_once(served: Stack) -> None:
    big = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n"
    lasted, received = await exchange(port_of(served), big)
    assert received.startswith(b"HTTP/1.1 431"), received[:200]
    assert lasted < HEAD  # refused as soon as the limit was passed, not at the deadline
    # Many headers, each small, over the limit together: the same.
    many = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + b"".join(
        b"X-%d: %s\r\n" % (n, b"b" * 100) for n in range(300)
    )
    _, received = await exchange(port_of(served), many + b"\r\n")
    assert received.startswith(b"HTTP/1.1 431"), received[:200]


async def test_requests_within_the_limits_are_served_on_a_kept_alive_connection(served: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(served))
    try:
        for _ in range(3):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Fine: " + b"c" * 10_000 + b"\r\n\r\n")
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), 10)
            assert status.startswith(b"HTTP/1.1 200"), status
            headers = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = int(next(line for line in headers.split(b"\r\n") if line.lower().startswith(b"content-length"))
                         .split(b":")[1])  # fmt: skip
            await asyncio.wait_for(reader.readexactly(length), 10)
    finally:
        writer.close()


# --- If-None-Match: what the read routes do with lists no client needs -----------------------------------------


async def test_an_if_none_match_too_long_or_too_many_tags_is_answered_as_if_absent(
    redis_url: str, redis: Redis, keys: Keys, tmp_path: Path
) -> None:
    version = await put(redis, keys, "item/1", {"id": 1})
    etag = f'"{version}"'
    app = build_app(serving_registry, redis_url, ServingSettings(cache_miss_wait=0.3))
    async with live_server(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:

        async def get(if_none_match: str) -> httpx.Response:
            return await client.get("/cache/item/1", headers={"If-None-Match": if_none_match})

        assert (await get(etag)).status_code == 304
        # 32 tags, the current one among them: a list a client may keep.
        assert (await get(", ".join([*(f'"{n}"' for n in range(31)), etag]))).status_code == 304
        # 33 tags, or over 2 KiB: ignored, the value is sent whole.
        for header in (", ".join([*(f'"{n}"' for n in range(32)), etag]), f'W/"{"x" * 2100}", {etag}'):
            response = await get(header)
            assert response.status_code == 200, response.text
            assert response.json() == {"id": 1}
        # 1 MB: past the head limit, refused like any oversized head: never a 304, never a 5xx.
        host, port = base_url.removeprefix("http://").split(":")
        request = f"GET /cache/item/1 HTTP/1.1\r\nHost: {host}\r\nIf-None-Match: ".encode()
        _, received = await exchange(int(port), request + b'"1", ' * 200_000 + etag.encode() + b"\r\n\r\n")
        assert received.startswith(b"HTTP/1.1 431"), received[:200]
        assert (await get(etag)).status_code == 304  # and the server goes on
