"""Reads cancelled in the middle of their Redis command must never leave a reply behind for another reader.

A request that times out on the client side is cancelled inside the app while its Redis command is in flight
(a classic way to desynchronise a pooled connection: the next user of that connection reads the previous
reply). Every stored value embeds its own key, so a response carrying another key's value is detectable.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics

import httpx
import pytest
from asgi_lifespan import LifespanManager
from redis.asyncio import Redis

from freshviews.core.keys import Keys
from freshviews.serving.settings import ServingSettings
from freshviews.worker.store import CacheStore, PendingWrite
from tests.support.serving import build_app
from tests.support.world import ROWS, kv_registry

pytestmark = pytest.mark.slow

READS = 20_000
WORKERS = 20


async def test_cancelled_reads_never_return_another_keys_value(redis: Redis) -> None:
    store = CacheStore(redis, Keys())
    names = [f"kv/{i}" for i in range(1, ROWS + 1)]
    tickets = await store.tickets(names)
    # Values of different sizes, so that replies of different lengths share the connections.
    await store.write(
        [
            PendingWrite(name, ticket, json.dumps({"key": name, "pad": "x" * (i % 7) * 300}).encode())
            for i, (name, ticket) in enumerate(zip(names, tickets, strict=True))
        ]
    )
    # No copies in memory: every read must go to Redis, where the cancellations are to happen.
    app = build_app(kv_registry, _url(redis), ServingSettings(cache_miss_wait=0, cache_memory_keys=0))
    mismatches: list[str] = []
    cancelled = answered = 0

    typical = 0.001

    async def reader(client: httpx.AsyncClient, seed: int) -> None:
        nonlocal cancelled, answered
        rng = random.Random(seed)
        for n in range(READS // WORKERS):
            key = rng.choice(names)
            # Most reads give up somewhere inside a typical read, so that many are cancelled while their
            # command is in flight; every tenth waits, to use whatever connection a cancelled read left behind.
            timeout = None if n % 10 == 0 else rng.uniform(0.1, 1.2) * typical
            try:
                async with asyncio.timeout(timeout):
                    response = await client.get(f"/cache/{key}")
            except TimeoutError:
                cancelled += 1
                continue
            answered += 1
            if response.status_code != 200:
                mismatches.append(f"{key}: {response.status_code} {response.text[:100]}")
            elif response.json()["key"] != key:
                mismatches.append(f"{key}: got {response.json()['key']}")

    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(manager.app), base_url="http://test") as client,
    ):
        # How long one read takes here, with as many readers at once as below (this machine's speed varies).
        loop = asyncio.get_running_loop()
        durations: list[float] = []

        async def timed(key: str) -> None:
            for _ in range(10):
                started = loop.time()
                await client.get(f"/cache/{key}")
                durations.append(loop.time() - started)

        await asyncio.gather(*(timed(names[i]) for i in range(WORKERS)))
        typical = statistics.median(durations)
        await asyncio.gather(*(reader(client, seed) for seed in range(WORKERS)))
    assert not mismatches, mismatches[:10]
    assert cancelled > READS // 5, f"only {cancelled} reads were cancelled: the scenario did not happen"
    assert answered > READS // 10


def _url(redis: Redis) -> str:
    options = redis.connection_pool.connection_kwargs
    return f"redis://{options['host']}:{options['port']}/{options.get('db', 0)}"
