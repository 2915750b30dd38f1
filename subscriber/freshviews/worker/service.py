"""The subscriber process's supervisor: one owner for every background loop.

Loops: consume (new changes), refresh (keys readers found missing, see subscriber/refresh.py), reclaim
(changes abandoned by dead consumers, plus stream gauges), sweep (on a timer, and at once when Redis comes
back empty), heartbeat. A Redis error inside a loop is logged, counted and retried with backoff: Redis
restarting is weather, not a reason to exit. A loop that crashes for any other reason is logged and ends the
process (exit status 1) so that its supervisor restarts it, rather than leaving a subscriber that silently
does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from freshviews.core.connections import check_redis, describe, where
from freshviews.core.views import Registry
from freshviews.worker import metrics
from freshviews.worker.consumer import BatchOutcome, ChangeConsumer
from freshviews.worker.groups import Entry
from freshviews.worker.recompute import Recomputer
from freshviews.worker.refresh import RefreshConsumer
from freshviews.worker.settings import SubscriberSettings
from freshviews.worker.store import CacheStore
from freshviews.worker.sweep import Sweeper, SweepResult

logger = logging.getLogger(__name__)

#: Entries drained into one batch while a backlog exists, so a burst costs one recompute per key.
MAX_COALESCE = 20_000
#: First and longest wait before a sweep whose source failed is tried again, seconds.
SOURCE_RETRY_FIRST = 0.5
SOURCE_RETRY_MAX = 30.0


class Subscriber:
    def __init__(self, *, redis: Redis, registry: Registry[Any], ctx: Any, settings: SubscriberSettings):
        keys = settings.keys
        self._redis = redis
        self._keys = keys
        self._settings = settings
        self.store = CacheStore(redis, keys, tombstone_ttl=settings.tombstone_ttl)
        # Changes and readers' refresh requests share one bound on recomputes: both land on the same backend.
        recomputer = Recomputer(self.store, ctx, concurrency=settings.concurrency)
        self.consumer = ChangeConsumer(
            redis=redis,
            keys=keys,
            registry=registry,
            ctx=ctx,
            recomputer=recomputer,
            group=settings.group,
            consumer=settings.consumer,
            batch_size=settings.batch_size,
            block_ms=settings.block_ms,
            max_attempts=settings.max_attempts,
            retry_backoff=settings.retry_backoff,
            max_deliveries=settings.max_deliveries,
            reclaim_idle_ms=settings.reclaim_idle_ms,
            dead_letter_maxlen=settings.dead_letter_maxlen,
        )
        self.refresher = RefreshConsumer(
            redis=redis,
            keys=keys,
            registry=registry,
            store=self.store,
            recomputer=recomputer,
            group=settings.group,
            consumer=settings.consumer,
            batch_size=settings.batch_size,
            block_ms=settings.block_ms,
        )
        self.sweeper = Sweeper(
            redis=redis,
            keys=keys,
            registry=registry,
            ctx=ctx,
            store=self.store,
            # Sweeps get their own, smaller concurrency so they never crowd out change-driven recomputes.
            recomputer=Recomputer(self.store, ctx, concurrency=settings.sweep_concurrency),
            owner=settings.consumer,
            rate=settings.sweep_rate,
        )
        self._stop = asyncio.Event()
        self._sweep_now = asyncio.Event()
        self._sweep_reason = "recover"
        self._own_pending_unknown = True
        self._gap_seen: bytes | None = None
        self._started = time.time()
        self._source_delay = SOURCE_RETRY_FIRST / 2
        self.batches = 0

    def stop(self) -> None:
        """Ask every loop to finish its current step and return (safe to call from a signal handler)."""
        self._stop.set()

    async def wait_for_redis(self) -> None:
        """Return once Redis answers; raise :class:`RedisConfigError` at once if it refuses us (wrong
        credentials, TLS mismatch): those do not fix themselves, and a clear error beats a silent retry loop."""
        delay = 0.1
        while not self._stop.is_set():
            problem = await check_redis(self._redis)
            if problem is None:
                return
            logger.warning("Redis at %s is not answering (%s); retrying in %.1fs", where(self._redis), problem, delay)
            await self._sleep(delay)
            delay = min(delay * 2, 5.0)

    async def start(self, *, warm: bool = True) -> bool:
        """Connect and make sure the group exists; return whether the cache is empty (e.g. Redis restarted).

        With ``warm`` an empty cache is filled here, before returning; :meth:`run` instead warms it in the
        sweep loop, so that changes arriving meanwhile are applied at once instead of queueing behind a
        full sweep (the fence keeps the warm-up from overwriting their newer values).
        """
        await self.wait_for_redis()
        await self.consumer.ensure_group()
        await self.refresher.ensure_group()
        empty = await self.store.is_empty()
        if empty and warm:
            await self.sweep("warm")
        return empty

    async def sweep(self, reason: str, *, lock: bool = True) -> SweepResult | None:
        lock_ttl = max(self._settings.sweep_interval, 60.0)
        if lock and not await self.sweeper.try_lock(lock_ttl):
            logger.info("another subscriber is sweeping; skipping this %s sweep", reason)
            return None
        try:
            return await self.sweeper.sweep(reason, should_stop=self._stop.is_set)
        finally:
            if lock:
                await self.sweeper.unlock()

    async def process(self, entries: list[Entry]) -> BatchOutcome:
        outcome = await self.consumer.process(entries)
        self.batches += 1
        return outcome

    async def drain(self) -> int:
        """Burst mode: apply everything pending and new, then return the number of changes handled."""
        handled = 0
        while batch := await self.consumer.read(pending=True, block=False):
            handled += (await self.process(batch)).entries
        while batch := await self._with_backlog(await self.consumer.read(block=False)):
            handled += (await self.process(batch)).entries
        return handled

    async def _with_backlog(self, batch: list[Entry]) -> list[Entry]:
        """Extend a full read with the backlog behind it, so that coalescing spans the whole burst."""
        while batch and len(batch) % self._settings.batch_size == 0 and len(batch) < MAX_COALESCE:
            more = await self.consumer.read(block=False)
            if not more:
                break
            batch.extend(more)
        return batch

    async def run(self) -> None:
        """Run until :meth:`stop`; a crashed loop cancels the others and re-raises."""
        if await self.start(warm=False):
            self._sweep_reason = "warm"
            self._sweep_now.set()
        else:
            # Before the consume loop moves the group's position past the hole and hides it.
            await self._check_gap()
        loops: dict[str, Callable[[], Awaitable[None]]] = {
            "consume": self._consume_step,
            "refresh": self.refresher.step,
            "reclaim": self._reclaim_step,
            "sweep": self._sweep_step,
            "heartbeat": self._heartbeat_step,
        }
        tasks = {asyncio.create_task(self._loop(name, step), name=name) for name, step in loops.items()}
        stopping = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait({*tasks, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping not in done:
                for task in done:
                    task.result()  # a loop returned or crashed before stop(): surface it
            _, late = await asyncio.wait(tasks, timeout=self._settings.shutdown_timeout)
            if late:
                logger.warning("shutdown: handing back the batch in flight (pending changes are reclaimed later)")
        finally:
            stopping.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, stopping, return_exceptions=True)
            with contextlib.suppress(RedisError, OSError):
                await self._redis.delete(self._keys.heartbeat(self._settings.consumer))

    async def _loop(self, name: str, step: Callable[[], Awaitable[None]]) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                await step()
                delay = 0.1
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # The group is gone: Redis restarted empty (or was flushed). Recreate it and warm the cache.
                logger.warning("consumer group missing (%s): recreating it and sweeping", exc)
                await self._recover()
            except (RedisError, OSError) as exc:
                metrics.REDIS_ERRORS.labels(name).inc()
                logger.warning("%s loop: Redis error (%s: %s); retrying in %.1fs", name, type(exc).__name__, exc, delay)
                await self._sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _recover(self) -> None:
        try:
            await self.consumer.ensure_group()
        except (RedisError, OSError) as exc:
            logger.warning("could not recreate the consumer group yet: %s", exc)
            await self._sleep(0.5)
        self._sweep_reason = "recover"
        self._sweep_now.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    async def _consume_step(self) -> None:
        # Changes left pending on this consumer (a batch that raised, or this consumer's previous life under
        # the same name) are retried here, in the one task that reads new ones: a batch between its read and
        # its acknowledgement is pending too, and no other loop can tell it from a leftover.
        if self._own_pending_unknown:
            while own := await self.consumer.read(pending=True, block=False):
                await self.process(own)
            self._own_pending_unknown = False
        if batch := await self._with_backlog(await self.consumer.read(block=True)):
            self._own_pending_unknown = True  # until process() returns, i.e. the batch is acknowledged
            await self.process(batch)
            self._own_pending_unknown = False

    async def _reclaim_step(self) -> None:
        while reclaimed := await self.consumer.reclaim():
            await self.process(reclaimed)
        for group in await self._redis.xinfo_groups(self._keys.changes):
            if group["name"] in (self.consumer.group, self.consumer.group.encode()):
                metrics.PENDING.set(group["pending"])
                if group.get("lag") is not None:  # Redis >= 7 only
                    metrics.STREAM_LAG.set(group["lag"])
        await self._check_gap()
        await self._sleep(self._settings.reclaim_interval)

    async def _check_gap(self) -> None:
        gap = await self.consumer.trimmed_gap(reported=self._gap_seen)
        if gap is None:
            return
        self._gap_seen = gap
        metrics.LOG_GAPS.inc()
        logger.warning("the change log was trimmed past changes never read (oldest kept: %s): sweeping", gap.decode())
        self._sweep_reason = "gap"
        self._sweep_now.set()

    async def _wait_for(self, event: asyncio.Event, seconds: float | None) -> None:
        """Return when ``event`` is set, :meth:`stop` is called, or ``seconds`` pass, whichever is first."""
        waiters = {asyncio.create_task(event.wait()), asyncio.create_task(self._stop.wait())}
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def _sweep_step(self) -> None:
        interval = self._settings.sweep_interval
        await self._wait_for(self._sweep_now, interval if interval > 0 else None)
        if self._stop.is_set():
            return
        reason = self._sweep_reason if self._sweep_now.is_set() else "timer"
        self._sweep_now.clear()
        try:
            await self.sweep(reason)
        except RedisError:
            raise
        except Exception as exc:
            # The source is not ready (tables not created yet, the database down): weather, like Redis down.
            self._source_delay = min(self._source_delay * 2, SOURCE_RETRY_MAX)
            logger.warning(
                "%s sweep: the views' source failed (%s); retrying in %.1fs", reason, describe(exc), self._source_delay
            )
            self._sweep_reason = reason
            self._sweep_now.set()
            await self._sleep(self._source_delay)
        else:
            self._source_delay = SOURCE_RETRY_FIRST / 2

    async def _heartbeat_step(self) -> None:
        ttl = self._settings.heartbeat_ttl
        status = {
            "consumer": self._settings.consumer,
            "group": self._settings.group,
            "at": time.time(),
            "started": self._started,
        }
        await self._redis.set(self._keys.heartbeat(self._settings.consumer), json.dumps(status), ex=ttl)
        await self._sleep(ttl / 3)
