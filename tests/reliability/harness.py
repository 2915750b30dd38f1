"""The world of the fault scenarios: rows (tests/support/world.py), subscriber processes over them, a version sampler.

While a scenario runs, the sampler reads every key's version every 10 ms: the stored version of a key must
never go down (V). At the end every key must equal its recompute from the source (converged) and nothing
may be left pending.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError

from freshviews.core.events import Change, Operation
from freshviews.core.keys import DATA, VERSION, Keys
from freshviews.publish.publisher import Publisher
from tests.support.helpers import free_port, wait_until
from tests.support.processes import REPO, Process, python, wait_http
from tests.support.world import ROWS, Source, render

RECLAIM_IDLE_MS = 1000
KEYS = Keys()


@dataclass
class World:
    """The rows (in a Redis of their own), the subscriber processes, and the version sampler."""

    tmp: Path
    cache_url: str
    source_url: str
    cache: Redis
    source: Redis
    publisher: Publisher
    subscribers: dict[str, tuple[Process, int]] = field(default_factory=dict)
    highest: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    writes: int = 0
    #: Cleared to stop the sampler (a flag as well as cancellation: a Redis client retrying a command can
    #: swallow the cancellation of the sampler's task).
    sampling: bool = True

    def start(self, name: str, *, redis_url: str | None = None, **env: str) -> Process:
        """Start a subscriber process (on ``redis_url``, e.g. through a fault proxy; default: the cache)."""
        port = free_port()
        proc = Process(
            name,
            python("-m", "freshviews.worker", "--views", "tests.support.world:kv_registry", "--consumer", name),
            {
                **{k: v for k, v in os.environ.items() if not k.startswith(("SUBSCRIBER_", "KV_"))},
                # The repository root, where tests.support.world is.
                "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                "REDIS_URL": redis_url or self.cache_url,
                "KV_SOURCE_URL": self.source_url,
                "SUBSCRIBER_METRICS_PORT": str(port),
                "SUBSCRIBER_RECLAIM_IDLE_MS": str(RECLAIM_IDLE_MS),
                "SUBSCRIBER_RECLAIM_INTERVAL": "0.2",
                "SUBSCRIBER_SWEEP_INTERVAL": "0",
                "SUBSCRIBER_SAMPLE_RATE": "0",
                "PYTHONUNBUFFERED": "1",
                **env,
            },
            self.tmp / f"{name}.log",
        )
        proc.start()
        self.subscribers[name] = (proc, port)
        wait_http(f"http://127.0.0.1:{port}/metrics", proc)
        return proc

    async def metrics(self, name: str) -> str:
        async with httpx.AsyncClient(timeout=5) as client:
            return (await client.get(f"http://127.0.0.1:{self.subscribers[name][1]}/metrics")).text

    async def write(self, ids: list[int], writer: str) -> list[str]:
        """Commit a change to each row, then publish the changes (as a backend's write path does).

        Returns the change ids, empty when the publish failed (Redis down): the commit stands regardless.
        """
        async with self.source.pipeline(transaction=False) as pipe:
            for row_id in ids:
                pipe.hincrby(Source.row(row_id), "n", 1)
                pipe.hset(Source.row(row_id), "w", writer)
            await pipe.execute()
        published = await self.publisher.publish(*(Change(entity="row", id=str(i), op=Operation.UPDATE) for i in ids))
        self.writes += len(ids)
        return published

    async def sample(self) -> None:
        """Every 10 ms, every key's version: record any that went down."""
        keys = [f"kv/{i}" for i in range(1, ROWS + 1)]
        while self.sampling:
            try:
                async with self.cache.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.hget(KEYS.value(key), VERSION)
                    versions = await pipe.execute()
            except (RedisError, OSError):  # Redis killed by the scenario: sample again once it is back
                await asyncio.sleep(0.01)
                continue
            for key, raw in zip(keys, versions, strict=True):
                if raw is None:
                    continue
                if int(raw) < self.highest.get(key, 0):
                    self.violations.append(f"{key}: {self.highest[key]} -> {int(raw)}")
                self.highest[key] = max(int(raw), self.highest.get(key, 0))
            await asyncio.sleep(0.01)

    async def stale(self) -> list[str]:
        ids = list(range(1, ROWS + 1))
        async with self.source.pipeline(transaction=False) as pipe:
            for row_id in ids:
                pipe.hgetall(Source.row(row_id))
            rows = await pipe.execute()
        async with self.cache.pipeline(transaction=False) as pipe:
            for row_id in ids:
                pipe.hget(KEYS.value(f"kv/{row_id}"), DATA)
            cached = await pipe.execute()
        return [
            f"kv/{i}"
            for i, row, data in zip(ids, rows, cached, strict=True)
            if data is None or json.loads(data) != render(i, row)
        ]

    async def pending(self) -> int:
        summary = await self.cache.xpending(KEYS.changes, "subscribers")
        return int(summary["pending"])

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{proc.log()}" for name, (proc, _) in self.subscribers.items())


async def converged(world: World, within: float) -> float:
    started = time.monotonic()
    stale: list[str] = []

    async def done() -> bool:
        nonlocal stale
        try:
            stale = await world.stale()
            return not stale and await world.pending() == 0
        except (RedisError, OSError):
            # A connection of this client's pool that a Redis restart closed fails once, then is replaced:
            # the test's own client, not the product, so ask again.
            return False

    await wait_until(done, timeout=within + 10, interval=0.05, message=f"not converged: {stale[:5]}\n{world.logs()}")
    return time.monotonic() - started


async def shows(world: World, row_id: int, writer: str) -> bool:
    data = await world.cache.hget(KEYS.value(f"kv/{row_id}"), DATA)
    return data is not None and json.loads(data)["w"] == writer


async def warmed(world: World) -> None:
    await wait_until(lambda: world.cache.exists(KEYS.value(f"kv/{ROWS}")), timeout=60, message="no warm-up")
