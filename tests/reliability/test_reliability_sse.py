"""SSE abuse: hundreds of streams, half of them killed abruptly and the rest frozen (they stop reading), cycle
after cycle. Killed streams are gone within ping + send timeout + 1 s, frozen ones once a send to them stalls
for the send timeout; then everything is back to its baseline (streams, tasks, open file descriptors, Redis
client connections), and memory does not creep up over the cycles."""

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
from helpers import wait_until
from redis.asyncio import Redis
from serving_support import build_app, live_server, put
from serving_views import registry

from app.serving import ServingSettings
from publisher.keys import Keys

pytestmark = pytest.mark.slow

STREAMS = 500
PING, SEND_TIMEOUT = 0.5, 1.0
#: Bound for dropping clients that stopped reading: the send timeout once the buffers towards them are full.
FROZEN_WITHIN = 15.0
BIG = b'{"pad": "' + b"x" * 200_000 + b'"}'


def _open(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a frozen reader's buffer fills fast
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /cache/stream?key=item/1 HTTP/1.1\r\nHost: t\r\n\r\n")
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


@pytest.mark.timeout(240)
@pytest.mark.parametrize("cycles", [3, pytest.param(10, marks=pytest.mark.chaos)])
async def test_streams_killed_or_frozen_leave_nothing_behind(redis_url: str, redis: Redis, cycles: int) -> None:
    keys = Keys()
    await put(redis, keys, "item/1", {"n": 0})
    settings = ServingSettings(sse_ping=PING, sse_send_timeout=SEND_TIMEOUT, sse_max_streams=STREAMS + 10)
    app = build_app(registry, redis_url, settings)
    async with live_server(app) as base_url:
        serving: Any = app.state.serving
        port = int(base_url.rsplit(":", 1)[1])
        baseline: dict[str, int] = {}
        rss: list[int] = []
        # Cycle 0 is the warm-up: it grows what is pooled (Redis connections, up to cache_redis_concurrency;
        # the stream machinery's lazily made parts). Every later cycle must come back to where it left off.
        for cycle in range(cycles + 1):
            socks = [_open(port) for _ in range(STREAMS)]
            await wait_until(lambda: serving.streams.open == STREAMS, 30, message=f"cycle {cycle}: not all open")
            for sock in socks[: STREAMS // 2]:
                _kill(sock)
            frozen = socks[STREAMS // 2 :]  # still connected, never read again
            # The killed half is noticed at the next write to it at the latest: a ping.
            killed_at = time.monotonic()
            await wait_until(
                lambda: serving.streams.open <= STREAMS // 2,
                PING + SEND_TIMEOUT + 1,
                message=f"cycle {cycle}: killed streams still open",
            )
            assert time.monotonic() - killed_at <= PING + SEND_TIMEOUT + 1
            # The frozen half is dropped once a send to it stalls for the send timeout, which takes filling the
            # socket buffers between us first (the kernel's, a few MB on loopback): keep writing a big value.
            started = time.monotonic()
            n = 0
            while serving.streams.open and time.monotonic() - started < FROZEN_WITHIN:
                n += 1
                await put(redis, keys, "item/1", BIG.replace(b"x", str(n % 10).encode(), 1))
                await asyncio.sleep(0.05)
            assert serving.streams.open == 0, f"cycle {cycle}: {serving.streams.open} frozen streams still open"
            for sock in frozen:
                sock.close()
            await asyncio.sleep(0.5)
            assert serving.hub.mailboxes == 0
            assert serving.hub.watched_keys == 0
            if cycle == 0:
                baseline = await _resources(redis)
            else:
                deadline = time.monotonic() + 5
                now = await _resources(redis)
                while any(abs(now[name] - baseline[name]) > 2 for name in baseline):
                    assert time.monotonic() < deadline, f"cycle {cycle}: {now} is not back to {baseline}"
                    await asyncio.sleep(0.05)
                    now = await _resources(redis)
            rss.append(_rss_kib())
        # From the end of the first measured cycle: the warm-up's own allocations are not growth.
        growth = (rss[-1] - rss[1]) / rss[1]
        assert growth < 0.05, f"RSS grew {growth:.1%} over {cycles} cycles: {rss}"
