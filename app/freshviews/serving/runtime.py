"""The read side's per-process runtime, :class:`Serving`: the one path every read of a cached key takes.

A user's app builds one :class:`Serving` in its lifespan from the clients it already has and yields it in the
lifespan state as ``serving``; :func:`freshviews.serving.mount` adds the routes that find it there (and refuses
to start without it)::

    @asynccontextmanager
    async def lifespan(app):
        redis = create_redis(url)
        async with Serving(redis=redis, settings=ServingSettings()) as serving:
            yield {"serving": serving}
        await redis.aclose()

    app = FastAPI(lifespan=lifespan)
    mount(app, registry)

Every read goes through :meth:`Serving.read`: the copy in memory (kept current by the update subscription),
else one shared Redis read per key however many readers wait on it (memory.py), else the miss path: a
refresh request and a bounded wait (refresh.py), or for a stream just the request. ``GET /cache/{key}`` adds
If-None-Match and ``min_version`` on top, in :meth:`Serving.answer`, which the route and the fast path both
send. Every Redis call is bounded by :meth:`Serving.deadline`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Literal, overload

from fastapi import Request
from fastapi.responses import Response
from redis.exceptions import RedisClusterException, RedisError

from freshviews.core.clients import RedisClient, is_cluster, ping_every_primary
from freshviews.core.clients import pool_size as connection_pool_size
from freshviews.core.logs import ensure_handler
from freshviews.core.views import ViewKey
from freshviews.serving.answers import answer_of, error, etag_matches, etag_of, not_modified
from freshviews.serving.hub import UpdateHub
from freshviews.serving.memory import Memory
from freshviews.serving.refresh import Refresher, TooManyMissesError
from freshviews.serving.settings import ServingSettings
from freshviews.serving.snapshots import Snapshot, read_snapshots, read_version
from freshviews.serving.stream import Streams

logger = logging.getLogger(__name__)

#: How often ``min_version`` re-reads the fence while waiting: a recompute that leaves the value unchanged
#: moves the fence without a notification, so waiting on notifications alone could miss it.
FENCE_POLL_SECONDS = 0.05
#: What :meth:`Serving.health` reads: keys in hash slots spread over the whole range, so that a Redis Cluster
#: node (which answers MOVED for the slots it does not own) fails the check, as it fails reads.
HEALTH_PROBES = tuple(f"freshviews/health/{n}" for n in range(8))


class CacheUnavailableError(RuntimeError):
    """Redis did not answer in time or refused: the reader gets 503 with Retry-After."""


class VersionNotReachedError(RuntimeError):
    """``min_version`` was not reached in time; ``current`` is what the cache holds."""

    def __init__(self, current: Snapshot, wanted: int) -> None:
        super().__init__(f"the cache holds version {current.fence} of {current.key!r}, not yet {wanted}")
        self.current = current


class Serving:
    """The read side of one app process: the update subscription (a supervised task), the copies in memory,
    the miss path, the streams, and the bounded Redis deadline.

    Use as an async context manager in the lifespan: entering starts the subscription and waits (bounded) for
    it; leaving stops it and cancels the reads and refreshes in flight.
    """

    def __init__(self, *, redis: RedisClient, settings: ServingSettings) -> None:
        """``redis`` is the app's client (its pool also serves the update subscription); ``settings`` names the
        keys (``FRESHVIEWS_KEY_PREFIX``) and the read side's limits."""
        keys = settings.keys
        pool_size = connection_pool_size(redis)
        if settings.cache_redis_concurrency >= pool_size:
            raise ValueError(
                f"cache_redis_concurrency ({settings.cache_redis_concurrency}) must be below the Redis client's "
                f"max_connections ({pool_size}): a burst of reads would otherwise fail with MaxConnectionsError"
            )
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self._redis_slots = asyncio.Semaphore(settings.cache_redis_concurrency)
        self.hub = UpdateHub(
            redis, keys, read_timeout=max(settings.cache_redis_timeout, 1.0), backoff_max=settings.sse_reconnect_max
        )
        self.memory = Memory(settings.cache_memory_keys, self.hub, self._read_redis)
        self.refresher = Refresher(
            redis,
            keys,
            self.hub,
            read=self.memory.read,
            deadline=self.deadline,
            miss_wait=settings.cache_miss_wait,
            max_pending=settings.cache_miss_max_pending,
            maxlen=settings.cache_refresh_maxlen,
        )
        self.streams = Streams(self.hub, functools.partial(self.read, wait=False), settings)
        self._hub_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Serving:
        ensure_handler()
        self._hub_task = asyncio.create_task(self.hub.run(), name="freshviews-update-hub")
        self._hub_task.add_done_callback(_hub_ended)
        # Streams opened right after start-up should not miss updates; a Redis that is down does not block start.
        if not await self.hub.wait_connected(self.settings.cache_redis_timeout * 4):
            logger.warning("update subscription not up yet (%s); continuing, it retries", self.hub.health())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.refresher.aclose()
        await self.memory.aclose()
        if self._hub_task is not None:
            self.hub.stop()
            self._hub_task.cancel()
            done, _ = await asyncio.wait({self._hub_task}, timeout=5)
            if not done:
                logger.error("the update hub did not stop within 5s; leaving it behind")
            self._hub_task = None

    @asynccontextmanager
    async def deadline(self) -> AsyncIterator[None]:
        """Bound the Redis calls inside by ``cache_redis_timeout``; any failure becomes CacheUnavailableError."""
        try:
            async with asyncio.timeout(self.settings.cache_redis_timeout), self._redis_slots:
                yield
        except (RedisError, RedisClusterException, OSError) as exc:  # TimeoutError is an OSError
            raise CacheUnavailableError(f"cache unavailable: {type(exc).__name__}") from exc

    async def read(self, view_keys: Sequence[str], *, wait: bool = True, copies: bool = True) -> list[Snapshot | None]:
        """The current snapshot of each key (None: not cached), by the one read path: the copy in memory, else
        one shared Redis read per key, else the miss path. A key not cached is asked of the subscribers; with
        ``wait`` the read waits for it up to ``cache_miss_wait``, else it comes by the update subscription.
        ``copies=False`` skips memory (a copy's fence may lag: see :meth:`read_at_least`).

        Raises CacheUnavailableError when Redis fails or is slow, TooManyMissesError (with ``wait``) when the
        process already waits on ``cache_miss_max_pending`` keys.
        """
        snapshots = await self.memory.read(view_keys, copies=copies)
        missing = [key for key, snapshot in zip(view_keys, snapshots, strict=True) if snapshot is None]
        if not missing:
            return snapshots
        if not wait:
            self.refresher.request(missing)
            return snapshots
        fetched = dict(zip(missing, await self.refresher.fetch(missing), strict=True))
        return [fetched.get(key, snapshot) for key, snapshot in zip(view_keys, snapshots, strict=True)]

    async def read_at_least(self, view_key: str, version: int) -> Snapshot | None:
        """The snapshot once the key's fence reaches ``version`` (read-your-writes); None if not cached at all.

        Raises VersionNotReachedError after ``cache_min_version_wait`` seconds, and what :meth:`read` raises.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.settings.cache_min_version_wait
        with self.hub.watch([view_key]) as box:
            while True:
                # Past memory: a recompute that left the value unchanged moves the fence unannounced, so a copy
                # would keep showing the older fence.
                (snapshot,) = await self.read([view_key], copies=False)
                if snapshot is None or snapshot.fence >= version:
                    return snapshot
                remaining = give_up - loop.time()
                if remaining <= 0:
                    raise VersionNotReachedError(snapshot, version)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, FENCE_POLL_SECONDS)):
                        await box.take()

    @overload
    async def answer(
        self, key: ViewKey, *, if_none_match: str | None = ..., min_version: int | None = ...
    ) -> Response: ...

    @overload
    async def answer(
        self, key: ViewKey, *, if_none_match: str | None = ..., memory_only: Literal[True]
    ) -> Response | None: ...

    async def answer(
        self,
        key: ViewKey,
        *,
        if_none_match: str | None = None,
        min_version: int | None = None,
        memory_only: bool = False,
    ) -> Response | None:
        """The answer to ``GET /cache/{key}`` (routes.py), Redis failures included (503 with Retry-After).

        If-None-Match with the current version is a 304: from memory, else after reading only the version.
        ``memory_only`` (the fast path) gives None unless memory holds the key, leaving the request to the route.
        """
        if memory_only and min_version is not None:
            raise ValueError("min_version needs Redis: it cannot be answered from memory only")
        retry_after = self.settings.cache_retry_after
        try:
            if min_version is not None:
                snapshot = await self.read_at_least(key.key, min_version)
            else:
                # The fast path does not count a miss: the route it hands over to counts the one it then serves.
                snapshot = self.memory.get(key.key, count_miss=not memory_only)
                if snapshot is None:
                    if memory_only:
                        return None
                    if if_none_match:
                        async with self.deadline():
                            version = await read_version(self.redis, self.keys, key.key)
                        if version is not None and etag_matches(if_none_match, etag_of(version)):
                            return not_modified(version, key.view)
                    (snapshot,) = await self.read([key.key], copies=False)  # memory was just asked
        except CacheUnavailableError as exc:
            return error(503, str(exc), retry_after=retry_after)
        except TooManyMissesError as exc:
            return error(503, f"{key.key!r} is not cached yet and {exc}", retry_after=retry_after)
        except VersionNotReachedError as exc:
            return error(503, str(exc), retry_after=retry_after)
        failure = self.refresher.failure(key.key) if snapshot is None else None
        return answer_of(key, snapshot, if_none_match, retry_after=retry_after, failure=failure)

    async def health(self) -> dict[str, str]:
        """``{"redis": ..., "updates": ...}``, each ``ok`` or ``error: <why>``: a keyed read through the read
        deadline (a Redis that answers PING but fails reads, such as a Cluster node answering MOVED, fails it)
        and, on a cluster, a PING of every master, and the state of the update subscription."""
        redis = "ok"
        try:
            async with self.deadline():
                await read_snapshots(self.redis, self.keys, HEALTH_PROBES)
                if is_cluster(self.redis):
                    await ping_every_primary(self.redis)
        except CacheUnavailableError as exc:
            cause = exc.__cause__
            redis = f"error: {exc}: {cause}"[:300] if cause is not None and str(cause) else f"error: {exc}"
            logger.warning("health check failed: %s", redis)
        return {"redis": redis, "updates": self.hub.health()}

    async def ready(self) -> bool:
        """Whether the cache is warm: a subscriber filled it (a complete sweep, or it found it filled) since Redis
        last lost its data. Until then reads of keys not computed yet take the miss path; raises
        :class:`CacheUnavailableError` when Redis does not answer within the read deadline."""
        async with self.deadline():
            return bool(await self.redis.exists(self.keys.warm))

    async def _read_redis(self, view_keys: Sequence[str]) -> list[Snapshot | None]:
        async with self.deadline():
            return await read_snapshots(self.redis, self.keys, view_keys)


def _hub_ended(task: asyncio.Task[None]) -> None:
    # run() ends by cancellation or stop() at shutdown; an exception means no stream of this process gets updates.
    if not task.cancelled() and task.exception() is not None:
        logger.error("the update hub ended: %r", task.exception())


def get_serving(request: Request) -> Serving:
    """The :class:`Serving` the lifespan put in the app state as ``serving``."""
    serving = getattr(request.state, "serving", None)
    if not isinstance(serving, Serving):
        raise RuntimeError("no Serving in the app state: yield {'serving': Serving(...)} from the lifespan")
    return serving
