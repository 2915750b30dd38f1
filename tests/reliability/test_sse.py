"""SSE abuse: hundreds of streams, half of them killed abruptly and the rest frozen (they stop reading while
updates keep coming), cycle after cycle. Within ping + send timeout + 1 s every stream is gone and the server
is back to its baseline (tasks, open file descriptors, Redis client connections), and memory does not creep up
over the cycles. The caps' 503 and 429 are tested in tests/serving/test_stream.py."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import socket
import struct
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from freshviews.core.keys import Keys
from freshviews.serving.settings import ServingSettings
from tests.support.serving import build_app, live_server, put
from tests.support.world import serving_registry

pytestmark = pytest.mark.slow

STREAMS = 500
PING, SEND_TIMEOUT = 0.5, 1.0
#: The bound for both halves: a killed client is noticed at the next write to it (a ping at the latest); a
#: frozen one when a send to it stalls for the send timeout, which its first big update makes happen at once
#: (the buffers towards it hold about 200 kB: its receive window, the app's 64 KiB socket send buffer, doubled
#: by the kernel, and the event loop's 64 KiB), and its socket goes when the kernel's user timeout (the same
#: send timeout) resets the connection (app/listen.py).
GONE_WITHIN = PING + SEND_TIMEOUT + 1
BIG = b'{"pad": "' + b"x" * 200_000 + b'"}'
#: How often the key the streams watch is rewritten while they are killed or frozen, seconds.
WRITE_EVERY = 0.1


async def _open(port: int) -> socket.socket:
    """A stream that got its 200 and its headers; the caller then reads no more from it, or kills it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the smallest window a peer can offer
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, b"GET /cache/stream?key=item/1 HTTP/1.1\r\nHost: t\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await loop.sock_recv(sock, 4096)
        assert chunk, f"closed after {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 200 "), head
    return sock


def _kill(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
    sock.close()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_kib() -> int:
    # Hand freed heap back to the OS first: glibc keeps it otherwise, and RSS would show where the allocator's
    # high-water mark happened to be, not what is still in use.
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def _tasks() -> int:
    # sse-starlette keeps one shutdown watcher per event loop after the first stream: not per client.
    return sum(getattr(t.get_coro(), "__name__", "") != "_shutdown_watcher" for t in asyncio.all_tasks())


async def _resources(redis: Redis) -> dict[str, int]:
    clients = int((await redis.info("clients"))["connected_clients"])
    return {"tasks": _tasks(), "fds": _fds(), "redis clients": clients}


async def _fill_pool(serving: Any) -> None:
    """Bring the app's Redis pool to the size the read routes can grow it to, as any busy server has it: the
    pool keeps connections for reuse, and the routes never use more than cache_redis_concurrency at once."""
    pool = serving.redis.connection_pool
    held = [await pool.get_connection() for _ in range(serving.settings.cache_redis_concurrency)]
    for connection in held:
        await pool.release(connection)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("cycles", [3, pytest.param(10, marks=pytest.mark.chaos)])
async def test_streams_killed_or_frozen_leave_nothing_behind(redis_url: str, redis: Redis, cycles: int) -> None:
    keys = Keys()
    await put(redis, keys, "item/1", {"n": 0})
    settings = ServingSettings(sse_ping=PING, sse_send_timeout=SEND_TIMEOUT, sse_max_streams=STREAMS + 10)
    app = build_app(serving_registry, redis_url, settings)
    async with live_server(app, settings) as base_url:
        serving: Any = app.state.serving
        port = int(base_url.rsplit(":", 1)[1])
        await _fill_pool(serving)
        baseline = await _resources(redis)
        rss: list[int] = []
        n = 0  # writes of the big value, across cycles
        # One cycle more than measured for memory: the first sets the allocator's footprint (about 20 MB here,
        # which Python and glibc keep for reuse rather than hand back); growth is what comes after it. The other
        # resources are held to the baseline taken before any stream, from the first cycle on.
        for cycle in range(1, cycles + 2):
            # All at once, as after a deploy: their initial values come from memory, so none is refused.
            socks = await asyncio.gather(*(_open(port) for _ in range(STREAMS)))
            assert serving.streams.open == STREAMS
            for sock in socks[: STREAMS // 2]:
                _kill(sock)
            frozen = socks[STREAMS // 2 :]  # still connected, never read again
            started = time.monotonic()
            while serving.streams.open and time.monotonic() - started < GONE_WITHIN:
                n += 1
                await put(redis, keys, "item/1", BIG.replace(b"x", str(n).encode(), 1))  # each one new
                await asyncio.sleep(WRITE_EVERY)
            took = time.monotonic() - started
            assert serving.streams.open == 0, f"cycle {cycle}: {serving.streams.open} streams open after {took:.1f}s"
            assert serving.hub.mailboxes == 0
            assert serving.hub.watched_keys == 0
            # The server let go of everything; what the frozen clients hold (their sockets, in this process) is
            # theirs until they close.
            expected = {**baseline, "fds": baseline["fds"] + len(frozen)}
            now = await _resources(redis)
            while any(abs(now[name] - expected[name]) > 2 for name in expected):
                assert time.monotonic() - started < GONE_WITHIN, f"cycle {cycle}: {now} is not back to {expected}"
                await asyncio.sleep(0.05)
                now = await _resources(redis)
            print(f"cycle {cycle}: streams gone in {took:.2f}s, resources back in {time.monotonic() - started:.2f}s")
            for sock in frozen:
                sock.close()
            rss.append(_rss_kib())
        growth = (rss[-1] - rss[0]) / rss[0]
        print(f"RSS after each cycle, KiB: {rss}; growth over the last {cycles}: {growth:.1%}")
        assert growth < 0.05, f"RSS grew {growth:.1%} over {cycles} cycles: {rss}"
