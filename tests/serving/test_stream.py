"""GET /cache/stream over real sockets (uvicorn): the event contract, resuming, heartbeats, one Redis subscription
per process, the caps, and nothing left behind when clients vanish."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from freshviews.core.embedded import EmbeddedRedis
from freshviews.core.keys import Keys
from freshviews.serving import Serving, ServingSettings, Snapshot
from freshviews.serving.stream import RecentEvents, encode_event
from tests.support.helpers import wait_until
from tests.support.serving import build_app, live_server, put
from tests.support.sse import SSEReader
from tests.support.world import serving_registry

ODD_BYTES = b'{ "z" : 1, "a":"caf\\u00e9 \xc3\xa9" }'


@asynccontextmanager
async def running(redis_url: str, **overrides: Any) -> AsyncIterator[tuple[str, Serving]]:
    settings = ServingSettings(**{"cache_miss_wait": 0.3, **overrides})
    app = build_app(serving_registry, redis_url, settings)
    async with live_server(app) as base_url:
        yield base_url, app.state.serving


@asynccontextmanager
async def stream(
    base_url: str, *view_keys: str, headers: dict[str, str] | None = None
) -> AsyncIterator[tuple[httpx.Response, SSEReader]]:
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=10) as http,
        http.stream("GET", "/cache/stream", params=[("key", k) for k in view_keys], headers=headers) as response,
    ):
        yield response, SSEReader(response)


def update(key: str, version: int, data: bytes) -> str:
    return f'event: update\nid: {version}\ndata: {{"key": "{key}", "version": {version}, "data": {data.decode()}}}'


async def test_current_values_first_then_every_update_in_the_exact_contract(
    redis_url: str, redis: Redis, keys: Keys
) -> None:
    v_item = await put(redis, keys, "item/1", ODD_BYTES)
    v_color = await put(redis, keys, "color/red", b'{"color":"red","ids":[3]}')
    async with running(redis_url) as (base_url, _), stream(base_url, "color/red", "item/1", "item/3") as (resp, sse):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["cache-control"] == "no-store"
        assert resp.headers["x-accel-buffering"] == "no"
        # Oldest version first, whatever the order asked; the stored bytes exactly as stored.
        assert (await sse.next()).raw == update("item/1", v_item, ODD_BYTES)
        assert (await sse.next()).raw == update("color/red", v_color, b'{"color":"red","ids":[3]}')
        # item/3 was not cached: it was requested from the subscribers and comes as an update once written.
        assert await redis.xlen(keys.refresh) == 1
        v3 = await put(redis, keys, "item/3", b'{"id":3}')
        assert (await sse.next()).raw == update("item/3", v3, b'{"id":3}')
        v_new = await put(redis, keys, "item/1", b'{"id":1}')
        event = await sse.next()
        assert (event.event, event.id) == ("update", str(v_new))
        assert event.json() == {"key": "item/1", "version": v_new, "data": {"id": 1}}
        gone = await put(redis, keys, "item/1", None)
        event = await sse.next()
        assert event.raw == f'event: delete\nid: {gone}\ndata: {{"key": "item/1", "version": {gone}}}'


async def test_last_event_id_skips_values_the_client_has(redis_url: str, redis: Redis, keys: Keys) -> None:
    v1 = await put(redis, keys, "item/1", {"id": 1})
    v2 = await put(redis, keys, "item/2", {"id": 2})
    v3 = await put(redis, keys, "item/3", {"id": 3})
    assert v1 < v2 < v3
    asked = ("item/1", "item/2", "item/3")
    async with running(redis_url, sse_resume_grace=0) as (base_url, _):
        async with stream(base_url, *asked, headers={"Last-Event-ID": str(v2)}) as (_, sse):
            assert (await sse.next()).id == str(v3)  # item/1 and item/2 are not resent
            v4 = await put(redis, keys, "item/1", {"id": 1, "new": True})
            assert (await sse.next()).id == str(v4)
        # An id that is not a version is ignored: everything is sent (a 4xx would stop EventSource for good).
        async with stream(base_url, *asked, headers={"Last-Event-ID": "garbage"}) as (resp, sse):
            assert resp.status_code == 200
            assert [(await sse.next()).json()["key"] for _ in range(3)] == ["item/2", "item/3", "item/1"]
    async with (
        running(redis_url, sse_resume_grace=60) as (base_url, _),
        stream(base_url, *asked, headers={"Last-Event-ID": str(v3)}) as (_, sse),
    ):
        # Within the grace every key is resent: a recompute that started earlier may have landed later.
        assert sorted([(await sse.next()).json()["key"] for _ in range(3)]) == sorted(asked)


async def test_heartbeats_at_the_configured_interval(redis_url: str) -> None:
    async with running(redis_url, sse_ping=0.2) as (base_url, _), stream(base_url, "item/1") as (_, sse):
        with contextlib.suppress(TimeoutError):
            await sse.next(timeout=0.75)
        assert len(sse.comments) >= 2
        assert all(c.startswith(": ping") for c in sse.comments)


async def test_one_redis_subscription_serves_every_stream(redis_url: str, redis: Redis, keys: Keys) -> None:
    await put(redis, keys, "item/1", {"n": 0})
    async with running(redis_url) as (base_url, serving), contextlib.AsyncExitStack() as streams:
        readers = [(await streams.enter_async_context(stream(base_url, "item/1")))[1] for _ in range(200)]
        for sse in readers:
            await sse.next()
        assert serving.hub.mailboxes == 200
        assert (await redis.pubsub_numsub(keys.updates_channel)) == [(keys.updates_channel.encode(), 1)]
        version = await put(redis, keys, "item/1", {"n": 1})
        assert {(await sse.next()).id for sse in readers} == {str(version)}


async def test_caps_and_bad_keys_are_refused_before_the_stream_starts(redis_url: str) -> None:
    async with (
        running(redis_url, sse_max_keys=2, sse_max_streams=2, sse_max_streams_per_client=0) as (base_url, serving),
        httpx.AsyncClient(base_url=base_url, timeout=5) as http,
    ):
        too_many = await http.get("/cache/stream", params=[("key", f"item/{i}") for i in range(1, 4)])
        assert (too_many.status_code, "at most 2 keys" in too_many.text) == (400, True)
        assert (await http.get("/cache/stream", params={"key": "nope/1"})).status_code == 404
        assert (await http.get("/cache/stream", params={"key": "item/x"})).status_code == 422
        assert (await http.get("/cache/stream")).status_code == 422
        async with stream(base_url, "item/1"), stream(base_url, "item/2"):
            full = await http.get("/cache/stream", params={"key": "item/1"})
            assert full.status_code == 503
            assert full.headers["retry-after"] == "1"
        await wait_until(lambda: serving.streams.open == 0, 5)
    async with (
        running(redis_url, sse_max_streams_per_client=1) as (base_url, _),
        stream(base_url, "item/1") as (first, _),
        httpx.AsyncClient(base_url=base_url, timeout=5) as http,
    ):
        assert first.status_code == 200
        second = await http.get("/cache/stream", params={"key": "item/1"})
        assert second.status_code == 429
        assert "per client" in second.json()["detail"]


def _tasks() -> set[asyncio.Task[Any]]:
    # sse-starlette starts one shutdown watcher per event loop on the first stream, and keeps it: not per client.
    return {t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__name__", "") != "_shutdown_watcher"}


def _open_raw_stream(port: int, *, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /cache/stream?key=item/1&key=color/red HTTP/1.1\r\nHost: t\r\n\r\n")
    return sock


def _reset(sock: socket.socket) -> None:
    # SO_LINGER 0: close sends a RST, a client vanishing without a goodbye.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def test_nothing_is_left_behind_when_clients_vanish(redis_url: str, redis: Redis, keys: Keys) -> None:
    await put(redis, keys, "item/1", {"n": 0})
    async with running(redis_url) as (base_url, serving):
        port = int(base_url.rsplit(":", 1)[1])
        baseline = _tasks()
        socks = [_open_raw_stream(port) for _ in range(20)]
        await wait_until(lambda: serving.streams.open == 20, 5, message="the streams did not open")
        for sock in socks[:10]:
            _reset(sock)
        for sock in socks[10:]:
            sock.close()
        await wait_until(lambda: serving.streams.open == 0, 5, message="stream slots leaked")
        await wait_until(lambda: serving.hub.mailboxes == 0 and serving.hub.watched_keys == 0, 5)
        await wait_until(lambda: _tasks() <= baseline, 5, message="tasks leaked")
        assert serving.refresher.pending == 0


@pytest.mark.timeout(60)
async def test_a_frozen_client_is_dropped_after_the_send_timeout_and_never_delays_the_others(
    redis_url: str, redis: Redis, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    big = b'{"pad": "' + b"x" * 400_000 + b'"}'
    await put(redis, keys, "item/1", big)
    caplog.set_level(logging.INFO, logger="freshviews.serving.stream")
    server_log = logging.getLogger("uvicorn.error")
    async with (
        running(redis_url, sse_send_timeout=2.0, sse_ping=0) as (base_url, serving),
        stream(base_url, "item/1") as (_, healthy),
    ):
        # uvicorn's own loggers do not propagate to the root, where caplog listens, and uvicorn sets them up
        # afresh when it starts.
        server_log.addHandler(caplog.handler)
        await healthy.next()  # the current value
        port = int(base_url.rsplit(":", 1)[1])
        sock = _open_raw_stream(port, rcvbuf=4096)  # then never reads
        try:
            await wait_until(lambda: serving.streams.open == 2, 5)
            loop = asyncio.get_running_loop()
            give_up = loop.time() + 30
            n = 0
            while serving.streams.open > 1 and loop.time() < give_up:
                n += 1
                version = await put(redis, keys, "item/1", big.replace(b"x", str(n % 10).encode(), 1))
                # The healthy reader gets every version promptly, however stuck the other one is.
                written = loop.time()
                event = await healthy.next(timeout=5)
                assert event.id == str(version)
                assert loop.time() - written < 1.0, f"delivery took {loop.time() - written:.2f}s"
                # The frozen reader's mailbox holds at most the latest value of its one key.
                assert serving.hub.largest_mailbox <= 1
                await asyncio.sleep(0.05)
            assert serving.streams.open == 1, "a client that reads nothing still holds its stream"
            assert serving.hub.mailboxes == 1
        finally:
            sock.close()
    server_log.removeHandler(caplog.handler)
    # Dropped on purpose: counted and logged at INFO, never an error in the server's log.
    assert "dropped the stream of 127.0.0.1" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_a_lost_subscription_is_remade_and_current_values_resent(
    redis_url: str, redis: Redis, keys: Keys, redis_server: EmbeddedRedis
) -> None:
    await put(redis, keys, "item/1", {"n": 0})
    async with (
        running(redis_url, sse_reconnect_max=0.2) as (base_url, serving),
        stream(base_url, "item/1") as (_, sse),
    ):
        assert (await sse.next()).json()["data"] == {"n": 0}
        redis_server.kill()
        await wait_until(lambda: serving.hub.health() != "ok", 5, message="the hub did not notice")
        assert "update subscription down" in serving.hub.health()
        redis_server.restart(wipe=True)
        # Written at once, possibly before the hub resubscribed: the resync after resubscribing delivers it if
        # the notification was lost.
        async with Redis.from_url(redis_url) as fresh:
            version = await put(fresh, keys, "item/1", {"n": 1})
        event = await sse.next(timeout=10)
        assert (event.id, event.json()["data"]) == (str(version), {"n": 1})
        assert serving.hub.health() == "ok"


def test_a_snapshot_is_encoded_once_for_all_its_streams_within_a_byte_budget() -> None:
    recent = RecentEvents(max_bytes=3_000)
    first = Snapshot("item/1", 1, b'{"pad": "' + b"a" * 1_000 + b'"}', 1)
    encoded = recent.encode(first)
    assert encoded == encode_event(first)
    assert recent.encode(Snapshot("item/1", 1, first.data, 1)) is encoded  # an equal snapshot: the same bytes
    for n in range(2, 5):  # about 1 kB each: the oldest goes once the budget is spent
        recent.encode(Snapshot(f"item/{n}", n, first.data, n))
    assert recent.encode(first) is not encoded
    assert recent.encode(first) == encoded
