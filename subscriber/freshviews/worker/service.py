"""The subscriber process's supervisor: one owner for every background loop.

Loops: consume (new changes), refresh (keys readers found missing, see :mod:`freshviews.worker.refresh`), reclaim
(changes abandoned by dead consumers, plus stream gauges and trimmed-log detection), sweep (on a timer, and at once
when Redis comes back empty), heartbeat, due (keys their view's minimum interval put off, when
``SUBSCRIBER_MIN_INTERVALS`` names any view: :mod:`freshviews.worker.throttle`), sample (the consistency sampler,
:mod:`freshviews.worker.sampler`, at ``SUBSCRIBER_SAMPLE_RATE`` keys per second), with an outbox the relay
(:mod:`freshviews.worker.outbox`), and with ``FRESHVIEWS_PGLOG_URL`` the PostgreSQL log source
(:mod:`freshviews.worker.pglog`). They run in one :class:`asyncio.TaskGroup`.

A Redis error inside a loop is logged, counted and retried with backoff: Redis restarting is weather, not a reason
to exit (a lost consumer group is recreated by the group reader, and the cache swept). A loop that fails for any
other reason is logged and ends :meth:`Subscriber.run`, which re-raises it, so that the process exits (status 1)
and its supervisor restarts it, rather than leaving a subscriber that silently does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from redis.exceptions import RedisClusterException, RedisError

from freshviews.core.clients import RedisClient
from freshviews.core.connections import RedisConfigError, check_redis, config_problem, describe, error_code, where
from freshviews.core.views import Registry
from freshviews.worker import metrics
from freshviews.worker.consumer import MAX_COALESCE, BatchOutcome, ChangeConsumer
from freshviews.worker.groups import Entry, GroupReader
from freshviews.worker.recompute import Recomputer
from freshviews.worker.refresh import RefreshConsumer
from freshviews.worker.sampler import Sampler
from freshviews.worker.settings import SubscriberSettings
from freshviews.worker.store import CacheStore
from freshviews.worker.sweep import Sweeper, SweepResult
from freshviews.worker.throttle import Throttle

if TYPE_CHECKING:
    from freshviews.outbox import Relay
    from freshviews.pglog.source import LogSource

# MAX_COALESCE: what a burst is coalesced up to, which benchmarks report beside their results.
__all__ = ["MAX_COALESCE", "Subscriber"]

logger = logging.getLogger(__name__)

Ctx = TypeVar("Ctx")

#: First and longest wait before a loop that hit a Redis error tries again, seconds: a Redis that comes back is
#: in use again within a second.
REDIS_RETRY_FIRST = 0.1
REDIS_RETRY_MAX = 1.0
#: First and longest wait before a sweep whose source failed is tried again, seconds.
SOURCE_RETRY_FIRST = 0.5
SOURCE_RETRY_MAX = 30.0


class Subscriber(Generic[Ctx]):
    """Everything one subscriber process does, for ``registry``'s views computed with ``ctx``.

    :meth:`run` is the process (every loop until :meth:`stop`); :meth:`start` and :meth:`drain` are burst mode,
    :meth:`sweep` one repair pass.
    """

    def __init__(
        self,
        *,
        redis: RedisClient,
        registry: Registry[Ctx],
        ctx: Ctx,
        settings: SubscriberSettings,
        relay: Relay | None = None,
        log: LogSource | None = None,
    ) -> None:
        """``relay`` (optional) moves an outbox's leftovers to the change log while :meth:`run` runs; ``log``
        (optional) reads PostgreSQL's log into it."""
        self._redis = redis
        self.relay = relay
        self.log = log
        self._keys = settings.keys
        self._settings = settings
        self.store = CacheStore(
            redis,
            self._keys,
            tombstone_ttl=settings.tombstone_ttl,
            negative_ttl=settings.negative_ttl,
            negative_max=settings.negative_max,
        )
        # Changes and readers' refresh requests share one bound on recomputes: both land on the same backend.
        recomputer = Recomputer(self.store, ctx, concurrency=settings.concurrency)
        self.throttle = Throttle(
            redis,
            self._keys,
            registry,
            settings.min_intervals,
            recomputer,
            claim_batch=settings.concurrency,
            max_attempts=settings.max_attempts,
            dead_letter_maxlen=settings.dead_letter_maxlen,
            consumer=settings.consumer,
        )
        self.consumer = ChangeConsumer(
            redis=redis,
            registry=registry,
            ctx=ctx,
            recomputer=recomputer,
            settings=settings,
            on_group_lost=lambda: self._request_sweep("recover"),
            on_changes=lambda changes: self.sampler.on_changes(changes),
            throttle=self.throttle,
        )
        self.sampler = Sampler(
            redis=redis,
            registry=registry,
            ctx=ctx,
            store=self.store,
            # Its own reader of the group's state: the consumer's holds this consumer's read position.
            reader=GroupReader(redis, self._keys.changes, settings),
            settings=settings,
            relay=relay,
            throttle=self.throttle,
        )
        self.refresher = RefreshConsumer(
            redis=redis, registry=registry, store=self.store, recomputer=recomputer, settings=settings
        )
        self.sweeper = Sweeper(
            redis=redis,
            registry=registry,
            ctx=ctx,
            store=self.store,
            # Sweeps get their own, smaller concurrency so they never crowd out change-driven recomputes.
            recomputer=Recomputer(self.store, ctx, concurrency=settings.sweep_concurrency),
            settings=settings,
        )
        self._stop = asyncio.Event()
        self._sweep_now = asyncio.Event()
        self._sweep_reason = "recover"
        #: Armed by stop() while run() runs: how long the loops may still take to finish their step.
        self._grace: asyncio.Timeout | None = None
        self._gap_seen: bytes | None = None
        self._started = time.time()
        self._source_delay = SOURCE_RETRY_FIRST / 2

    @property
    def batches(self) -> int:
        """Batches of changes applied so far."""
        return self.consumer.batches

    def stop(self) -> None:
        """Ask every loop to finish its current step and return (safe to call from a signal handler).

        A loop still busy ``shutdown_timeout`` seconds later is cancelled: its batch stays pending, and is
        retried by this consumer's next life or reclaimed by another consumer.
        """
        self._stop.set()
        self._sweep_now.set()  # wakes the sweep loop, which looks at the stop flag first
        if self.relay is not None:
            self.relay.stop()
        if self.log is not None:
            self.log.stop()
        self._arm_grace()

    def _arm_grace(self) -> None:
        if self._grace is not None and self._grace.when() is None:
            self._grace.reschedule(asyncio.get_running_loop().time() + self._settings.shutdown_timeout)

    async def wait_for_redis(self) -> None:
        """Return once Redis answers; raise :class:`RedisConfigError` at once if it refuses us (wrong
        credentials, TLS mismatch): those do not fix themselves, and a clear error beats a silent retry loop."""
        delay = REDIS_RETRY_FIRST
        while not self._stop.is_set():
            problem = await check_redis(self._redis)
            if problem is None:
                return
            logger.warning("Redis at %s is not answering (%s); retrying in %.1fs", where(self._redis), problem, delay)
            await self._sleep(delay)
            delay = min(delay * 2, REDIS_RETRY_MAX)

    async def start(self, *, warm: bool = True) -> bool:
        """Connect and make sure the groups exist; return whether the cache is empty (e.g. Redis restarted).

        With ``warm`` an empty cache is filled here, before returning; :meth:`run` instead warms it in the
        sweep loop, so that changes arriving meanwhile are applied at once instead of queueing behind a
        full sweep (the fence keeps the warm-up from overwriting their newer values).
        """
        await self.wait_for_redis()
        await self.consumer.reader.ensure()
        await self.refresher.reader.ensure()
        empty = await self.store.is_empty()
        if not empty:
            # Values in Redis: filled by an earlier run (whose marker a Redis restart from its AOF keeps anyway).
            await self._redis.set(self._keys.warm, str(time.time()), nx=True)
        elif warm:
            await self.sweep("warm")
        return empty

    async def sweep(self, reason: str, *, lock: bool = True) -> SweepResult | None:
        """One repair pass (see :mod:`freshviews.worker.sweep`); None when another subscriber holds the lock.

        The lock is a short lease renewed while the pass runs (:mod:`freshviews.worker.lease`); a pass whose
        lease was lost stops at its next chunk, with ``lock_lost`` set.
        """
        if not lock:
            return await self.sweeper.sweep(reason, should_stop=self._stop.is_set)
        lease = self.sweeper.lease
        if not await lease.acquire():
            logger.info("another subscriber is sweeping; skipping this %s sweep", reason)
            return None
        async with lease.held() as lost:
            return await self.sweeper.sweep(reason, should_stop=self._stop.is_set, lost=lost.is_set)

    async def process(self, entries: list[Entry]) -> BatchOutcome:
        """Apply one batch of changes read from the log and acknowledge it."""
        return await self.consumer.process(entries)

    async def drain(self) -> int:
        """Burst mode: apply everything pending and new, then return the number of changes handled. Keys a
        minimum interval put off are recomputed at the end (a burst leaves nothing due behind)."""
        handled = await self.consumer.drain()
        await self.throttle.run_due(everything=True)
        return handled

    async def run(self) -> None:
        """Run every loop until :meth:`stop`; re-raise the error of a loop that failed (the others are cancelled)."""
        if await self.start(warm=False):
            self._request_sweep("warm")
        else:
            # Before the consume loop moves the group's position past the hole and hides it.
            await self._check_gap()
        loops: dict[str, Callable[[], Awaitable[object]]] = {
            "consume": self.consumer.step,
            "refresh": self.refresher.step,
            "reclaim": self._reclaim_step,
            "sweep": self._sweep_step,
            "heartbeat": self._heartbeat_step,
            # In every subscriber, intervals named or not: keys another one left due are recomputed all the same.
            "due": self.throttle.step,
        }
        if self._settings.sample_rate > 0:
            loops["sample"] = self._sample_step
        try:
            # The grace deadline, once stop() arms it, cancels the task group and with it every loop still busy.
            async with asyncio.timeout(None) as self._grace:
                if self._stop.is_set():
                    self._arm_grace()
                async with asyncio.TaskGroup() as group:
                    for name, step in loops.items():
                        group.create_task(self._loop(name, step), name=name)
                    if self.relay is not None:
                        # The relay retries its own failures (the database or Redis away), logging each attempt.
                        group.create_task(self.relay.run(interval=self._settings.relay_interval), name="relay")
                        group.create_task(self.relay.listen(), name="relay-listen")
                    if self.log is not None:
                        # Like the relay, the log source retries the database and Redis being away itself.
                        group.create_task(self.log.run(), name="pglog")
                    try:
                        await self._stop.wait()
                    finally:
                        # Cancelled because a loop failed (or run() itself was): the loops are being cancelled, and
                        # stopping too ends any whose cancellation is lost (on Python 3.11 asyncio.wait_for, which
                        # redis-py sends commands through, can swallow one) after its step, within the grace period.
                        self.stop()
        except TimeoutError:
            logger.warning("shutdown: handing back the batch in flight (pending changes are retried or reclaimed)")
        except ExceptionGroup as failed:
            # Each failure was logged by its loop; the first one is what ends the process.
            raise failed.exceptions[0] from None
        finally:
            self._grace = None
            with contextlib.suppress(RedisError, OSError):
                await self._redis.delete(self._keys.heartbeat(self._settings.consumer))

    async def _loop(self, name: str, step: Callable[[], Awaitable[object]]) -> None:
        delay = REDIS_RETRY_FIRST
        while not self._stop.is_set():
            try:
                await step()
            except (RedisError, RedisClusterException, OSError) as exc:
                # A refusal (a revoked permission, a password Redis no longer accepts) does not go away by retrying.
                if error_code(exc) and (problem := config_problem(exc, self._redis)) is not None:
                    logger.error("%s loop: %s", name, problem)
                    raise RedisConfigError(problem) from exc
                metrics.REDIS_ERRORS.labels(name).inc()
                logger.warning("%s loop: Redis error (%s); retrying in %.1fs", name, describe(exc), delay)
                await self._sleep(delay)
                delay = min(delay * 2, REDIS_RETRY_MAX)
            except Exception:
                logger.exception("%s loop failed: stopping the subscriber", name)
                raise
            else:
                delay = REDIS_RETRY_FIRST

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less if :meth:`stop` is called meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    def _request_sweep(self, reason: str) -> None:
        self._sweep_reason = reason
        self._sweep_now.set()

    async def _reclaim_step(self) -> None:
        while reclaimed := await self.consumer.reclaim():
            await self.process(reclaimed)
        await self.consumer.update_gauges()
        await self._check_gap()
        metrics.RECLAIM_ROUNDS.inc()
        await self._sleep(self._settings.reclaim_interval)

    async def _check_gap(self) -> None:
        gap = await self.consumer.reader.trimmed_gap(reported=self._gap_seen)
        if gap is None:
            return
        self._gap_seen = gap
        metrics.LOG_GAPS.inc()
        logger.warning("the change log was trimmed past changes never read (oldest kept: %s): sweeping", gap.decode())
        self._request_sweep("gap")

    async def _sweep_step(self) -> None:
        interval = self._settings.sweep_interval
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval if interval > 0 else None):
                await self._sweep_now.wait()
        if self._stop.is_set():
            return
        reason = self._sweep_reason if self._sweep_now.is_set() else "timer"
        self._sweep_now.clear()
        try:
            result = await self.sweep(reason)
        except RedisError:
            self._request_sweep(reason)  # still owed: swept once the loop's backoff lets Redis come back
            raise
        except Exception as exc:
            # The source is not ready (tables not created yet, the database down): weather, like Redis down.
            self._source_delay = min(self._source_delay * 2, SOURCE_RETRY_MAX)
            logger.warning(
                "%s sweep: the views' source failed (%s); retrying in %.1fs", reason, describe(exc), self._source_delay
            )
            self._request_sweep(reason)
            await self._sleep(self._source_delay)
        else:
            self._source_delay = SOURCE_RETRY_FIRST / 2
            if result is not None and result.lock_lost:
                self._request_sweep(reason)  # still owed; skipped at once if another subscriber sweeps now

    async def _sample_step(self) -> None:
        started = time.monotonic()
        if not await self.sampler.step():
            await self._sleep(1.0)  # nothing cached yet (the warm-up is filling it), or a backlog to judge first
        # Paced by the start of each sample, so that a slow compute does not add its own time to the interval.
        await self._sleep(max(0.0, 1 / self._settings.sample_rate - (time.monotonic() - started)))

    async def _heartbeat_step(self) -> None:
        ttl = self._settings.heartbeat_ttl
        status: dict[str, object] = {
            "consumer": self._settings.consumer,
            "group": self._settings.group,
            "at": time.time(),
            "started": self._started,
        }
        if self.relay is not None:
            try:
                outbox = await self.relay.status()
                status["outbox"] = {"rows": outbox.rows, "oldest_seconds": outbox.oldest_seconds}
            except Exception as exc:  # the database being away is the relay's to report; liveness goes on
                status["outbox"] = {"error": describe(exc)[:200]}
        await self._redis.set(self._keys.heartbeat(self._settings.consumer), json.dumps(status), ex=ttl)
        await self._sleep(ttl / 3)
