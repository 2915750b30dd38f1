"""Recomputing a set of keys: ticket, compute (bounded concurrency), fenced write. Shared by changes and sweeps."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pydantic_core
from pydantic import BaseModel

from freshviews.core.views import MISSING, ViewKey
from freshviews.worker import metrics
from freshviews.worker.store import CacheStore, PendingWrite, WriteOutcome

logger = logging.getLogger(__name__)

Ctx = TypeVar("Ctx")


def serialize(value: Any) -> bytes | None:
    """JSON bytes of a computed value (stored as is and served without re-encoding); None for MISSING."""
    if value is MISSING:
        return None
    if isinstance(value, BaseModel):
        return value.model_dump_json().encode()
    return pydantic_core.to_json(value)


@dataclass
class RecomputeResult:
    outcomes: dict[str, WriteOutcome] = field(default_factory=dict)
    failures: dict[str, BaseException] = field(default_factory=dict)


class Recomputer(Generic[Ctx]):
    """Recomputes keys and writes them through the fence, at most ``concurrency`` computes at once; every compute
    gets ``ctx``, the context the registry opened."""

    def __init__(self, store: CacheStore, ctx: Ctx, *, concurrency: int) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self._store = store
        self._ctx = ctx
        self._limit = asyncio.Semaphore(concurrency)

    async def _compute(self, view_key: ViewKey, trigger: str) -> bytes | None:
        view = view_key.view
        async with self._limit:
            started = time.perf_counter()
            try:
                value = await view.compute(self._ctx, **view_key.params)
            except Exception:
                metrics.RECOMPUTE_FAILURES.labels(view.name).inc()
                raise
            finally:
                metrics.RECOMPUTE_SECONDS.labels(view.name).observe(time.perf_counter() - started)
                metrics.RECOMPUTES.labels(view.name, trigger).inc()
        return serialize(value)

    async def run(self, keys: Mapping[str, ViewKey], *, trigger: str) -> RecomputeResult:
        """Recompute ``keys``: one round trip for the tickets, then the writes as the computes finish.

        Values are written in waves, each holding every compute finished since the last one: a fast view
        does not wait for the slowest one of its batch (freshness), and cheap views that finish together
        still share one round trip (throughput).
        """
        result = RecomputeResult()
        if not keys:
            return result
        names = list(keys)
        tickets = dict(zip(names, await self._store.tickets(names), strict=True))
        tasks = {asyncio.create_task(self._compute(keys[name], trigger)): name for name in names}
        try:
            pending: set[asyncio.Task[bytes | None]] = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                writes: list[PendingWrite] = []
                for task in done:
                    name = tasks[task]
                    if (error := task.exception()) is not None:
                        result.failures[name] = error
                    else:
                        writes.append(PendingWrite(name, tickets[name], task.result()))
                await self._write(keys, writes, result)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return result

    async def _write(self, keys: Mapping[str, ViewKey], writes: list[PendingWrite], result: RecomputeResult) -> None:
        if not writes:
            return
        for write, written in zip(writes, await self._store.write(writes), strict=True):
            result.outcomes[write.key] = written
            view = keys[write.key].view.name
            metrics.WRITES.labels(view, written.name.lower()).inc()
            if written is WriteOutcome.FENCED:
                metrics.FENCE_REJECTIONS.labels(view).inc()
