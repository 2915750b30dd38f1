"""The read side's settings and per-process runtime, shared by the cache routes and the SSE stream.

A user's app builds one :class:`Serving` in its lifespan from the clients it already has and puts it in the
app state; the routers of :func:`app.cache_routes.cache_router` find it there::

    @asynccontextmanager
    async def lifespan(app):
        redis = create_redis(url)
        async with Serving(redis=redis, keys=Keys(), settings=ServingSettings()) as serving:
            yield {"serving": serving}
        await redis.aclose()

    app.include_router(cache_router(registry))
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType

from fastapi import Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter as MetricCounter
from prometheus_client import Gauge
from redis.asyncio import Redis
from redis.exceptions import RedisError

from freshviews.core.keys import Keys
from freshviews.core.logs import ensure_handler
from freshviews.serving.hub import UpdateHub
from freshviews.serving.memory import NearCache
from freshviews.serving.reads import SharedReads
from freshviews.serving.refresh import Refresher
from freshviews.serving.settings import ServingSettings

logger = logging.getLogger(__name__)

#: Memory copies are served only while Redis answered on the update subscription this recently, seconds.
NEAR_CACHE_TRUST = 1.0


class CacheUnavailableError(RuntimeError):
    """Redis did not answer in time or refused: the reader gets 503 with Retry-After."""


class StreamLimitError(RuntimeError):
    """No room for another SSE stream: ``status`` is 503 (the process is full) or 429 (this client is)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


STREAMS_OPEN = Gauge("freshviews_serving_streams_open", "SSE streams open in this process")
STREAMS_REFUSED = MetricCounter("freshviews_serving_streams_refused_total", "SSE streams refused by a cap", ["status"])


class StreamSlots:
    """Counts open SSE streams, in total and per client address (``request.client.host``: behind a proxy, let
    uvicorn trust its X-Forwarded-For, with ``FORWARDED_ALLOW_IPS``, so that it is the real client's)."""

    def __init__(self, *, total: int, per_client: int) -> None:
        self._total = total
        self._per_client = per_client
        self._by_client: Counter[str] = Counter()
        self.open = 0

    def acquire(self, client: str) -> None:
        if self.open >= self._total:
            STREAMS_REFUSED.labels("503").inc()
            raise StreamLimitError(503, f"this server holds its maximum of {self._total} streams")
        if self._per_client and self._by_client[client] >= self._per_client:
            STREAMS_REFUSED.labels("429").inc()
            raise StreamLimitError(429, f"at most {self._per_client} streams per client")
        self.open += 1
        self._by_client[client] += 1
        STREAMS_OPEN.inc()

    def release(self, client: str) -> None:
        self.open -= 1
        STREAMS_OPEN.dec()
        self._by_client[client] -= 1
        if self._by_client[client] <= 0:
            del self._by_client[client]


class Serving:
    """The read side of one app process: clients, settings, the update hub (a supervised task), the refresher.

    Use as an async context manager in the lifespan: entering starts the hub and waits (bounded) for its
    subscription; leaving stops it and cancels refreshes in flight.
    """

    def __init__(self, *, redis: Redis, keys: Keys, settings: ServingSettings) -> None:
        pool_size = redis.connection_pool.max_connections
        if settings.cache_redis_concurrency >= pool_size:
            raise ValueError(
                f"cache_redis_concurrency ({settings.cache_redis_concurrency}) must be below the Redis client's "
                f"max_connections ({pool_size}): a burst of reads would otherwise fail with MaxConnectionsError"
            )
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self._redis_slots = asyncio.Semaphore(settings.cache_redis_concurrency)
        self.near = NearCache(settings.cache_memory_keys, live=lambda: self.hub.heard_within(NEAR_CACHE_TRUST))
        self.hub = UpdateHub(
            redis,
            keys,
            read_timeout=max(settings.cache_redis_timeout, 1.0),
            backoff_max=settings.sse_reconnect_max,
            near=self.near,
        )
        self.refresher = Refresher(
            redis,
            keys,
            self.hub,
            miss_wait=settings.cache_miss_wait,
            version_wait=settings.cache_min_version_wait,
            max_pending=settings.cache_miss_max_pending,
            maxlen=settings.cache_refresh_maxlen,
            deadline=self.deadline,
        )
        self.reads = SharedReads(redis, keys, self.near, self.deadline)
        self.streams = StreamSlots(total=settings.sse_max_streams, per_client=settings.sse_max_streams_per_client)
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
        await self.reads.aclose()
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
        except (RedisError, OSError) as exc:  # TimeoutError is an OSError
            raise CacheUnavailableError(f"cache unavailable: {type(exc).__name__}") from exc


def _hub_ended(task: asyncio.Task[None]) -> None:
    # run() ends by cancellation or stop() at shutdown; an exception means no stream of this process gets updates.
    if not task.cancelled() and task.exception() is not None:
        logger.error("the update hub ended: %r", task.exception())


def error(serving: Serving, status: int, detail: str, *, retry: bool = False) -> JSONResponse:
    """A JSON error with its reason; ``retry`` adds Retry-After (and no-store: the next answer may differ)."""
    headers = None
    if retry:
        headers = {"Retry-After": str(serving.settings.cache_retry_after), "Cache-Control": "no-store"}
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def get_serving(request: Request) -> Serving:
    """The :class:`Serving` the lifespan put in the app state as ``serving``."""
    serving = getattr(request.state, "serving", None)
    if not isinstance(serving, Serving):
        raise RuntimeError("no Serving in the app state: yield {'serving': Serving(...)} from the lifespan")
    return serving
