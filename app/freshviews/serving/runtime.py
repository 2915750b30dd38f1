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
from contextvars import ContextVar
from types import TracebackType

from fastapi import Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter as MetricCounter
from prometheus_client import Gauge
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.asyncio import Redis
from redis.exceptions import RedisError

from freshviews.core.keys import Keys
from freshviews.serving.hub import UpdateHub
from freshviews.serving.memory import NearCache
from freshviews.serving.reads import SharedReads
from freshviews.serving.refresh import Refresher

logger = logging.getLogger(__name__)

#: Memory copies are served only while Redis answered on the update subscription this recently, seconds.
NEAR_CACHE_TRUST = 1.0


class ServingSettings(BaseSettings):
    """Limits and timeouts of the read routes (environment prefix ``APP_``; the scoreboard's AppSettings has them)."""

    model_config = SettingsConfigDict(env_prefix="APP_", extra="ignore")

    #: The longest one read waits on Redis before answering 503 (a dead or frozen Redis must not hang readers).
    cache_redis_timeout: float = Field(default=0.5, gt=0, le=30)
    #: Redis calls the read routes make at once in this process; more wait (within cache_redis_timeout) rather
    #: than fail. Must stay below the client's connection pool size (redis-py's default is 100), which also
    #: serves the update subscription and the app's other Redis work.
    cache_redis_concurrency: int = Field(default=64, ge=1)
    #: Retry-After of every 503, seconds.
    cache_retry_after: int = Field(default=1, ge=0, le=3600)
    #: Values this process keeps in memory, kept current by the update subscription (0 = always read Redis).
    cache_memory_keys: int = Field(default=10_000, ge=0)
    #: Keys accepted by one ``GET /cache?key=...&key=...`` (400 beyond).
    cache_batch_max_keys: int = Field(default=100, ge=1, le=10_000)
    #: How long a read of a valid key that is not cached waits for the subscriber to compute it, seconds.
    cache_miss_wait: float = Field(default=0.5, ge=0, le=30)
    #: Distinct keys being refreshed at once in this process; further misses get 503 without asking.
    cache_miss_max_pending: int = Field(default=1000, ge=1)
    #: Approximate length of the refresh request stream (requests are hints: old ones may be trimmed).
    cache_refresh_maxlen: int = Field(default=10_000, ge=10)
    #: How long ``?min_version=`` waits for the cache to reach that version, seconds.
    cache_min_version_wait: float = Field(default=2.0, ge=0, le=60)
    #: Keys one SSE stream may watch (400 beyond).
    sse_max_keys: int = Field(default=50, ge=1, le=10_000)
    #: SSE streams open at once in this process (503 beyond).
    sse_max_streams: int = Field(default=1000, ge=1)
    #: SSE streams one client address may hold at once (429 beyond); 0 = no per-client cap.
    sse_max_streams_per_client: int = Field(default=0, ge=0)
    #: Seconds between heartbeat comments on an idle stream (keeps proxies from closing it); 0 = none.
    sse_ping: float = Field(default=15.0, ge=0)
    #: A client that does not take an event (or ping) within this many seconds is disconnected. A send waits
    #: only once the buffers towards the client are full: see socket_send_buffer. Also the kernel's timeout
    #: (TCP_USER_TIMEOUT) for a connection that acknowledges nothing or keeps its window shut (app/listen.py).
    sse_send_timeout: float = Field(default=10.0, gt=0)
    #: On reconnect, a key whose version is older than Last-Event-ID by more than this many seconds is not
    #: sent again (see app/stream.py for why a margin is needed); 0 trusts Last-Event-ID exactly.
    sse_resume_grace: float = Field(default=60.0, ge=0)
    #: The longest wait between attempts to resubscribe to update notifications, seconds.
    sse_reconnect_max: float = Field(default=5.0, gt=0)
    #: SO_SNDBUF of the connections the app accepts, bytes (0 = the kernel's, autotuned up to megabytes): how
    #: much can be queued to a client that stopped reading before a send to it stalls (app/listen.py). Applies
    #: where the server is started through app/listen.py, as ``python -m app serve`` does.
    socket_send_buffer: int = Field(default=65_536, ge=0)


class CacheUnavailableError(RuntimeError):
    """Redis did not answer in time or refused: the reader gets 503 with Retry-After."""


class StreamLimitError(RuntimeError):
    """No room for another SSE stream: ``status`` is 503 (the process is full) or 429 (this client is)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


#: Set in the task of a stream dropped because its client stopped reading (app/stream.py).
STREAM_DROPPED: ContextVar[bool] = ContextVar("freshviews_stream_dropped", default=False)


class DroppedStreamFilter(logging.Filter):
    """Silences uvicorn's "ASGI callable returned without completing response." for a stream dropped on
    purpose: the drop is counted and logged already, and an ERROR per frozen client would read as a fault.
    uvicorn logs it in the request's own task, after the app returned, so the context variable still says."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (STREAM_DROPPED.get() and record.getMessage().startswith("ASGI callable returned without"))


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
        self._log_filter = DroppedStreamFilter()

    async def __aenter__(self) -> Serving:
        logging.getLogger("uvicorn.error").addFilter(self._log_filter)
        self._hub_task = asyncio.create_task(self.hub.run(), name="freshviews-update-hub")
        self._hub_task.add_done_callback(_hub_ended)
        # Streams opened right after start-up should not miss updates; a Redis that is down does not block start.
        if not await self.hub.wait_connected(self.settings.cache_redis_timeout * 4):
            logger.warning("update subscription not up yet (%s); continuing, it retries", self.hub.health())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        logging.getLogger("uvicorn.error").removeFilter(self._log_filter)
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
