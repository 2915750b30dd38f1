"""Reads of keys the cache cannot answer yet: a miss, or a version older than the reader's own write.

A miss on a valid key (a cold start, Redis restarted empty) never computes the view here: readers never
trigger backend work directly. Instead one refresh request per key goes to the subscribers (``<p>:refresh``,
see subscriber/refresh.py) and the reader waits briefly for the update notification. The request is
single-flight per process: however many readers miss a key at once, one task sends one request and they all
share its answer.

``min_version=V`` (read-your-writes) waits until the key's *fence* reaches V: the fence is the ticket of the
newest recompute applied, so it also moves when a recompute found the value unchanged (the stored version,
and the update notification, only move when the value changed).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from prometheus_client import Counter
from redis.asyncio import Redis

from freshviews.core.keys import REFRESH_KEY, Keys
from freshviews.serving.hub import Snapshot, UpdateHub, read_snapshots

logger = logging.getLogger(__name__)

#: How often ``min_version`` re-reads the fence while waiting: a recompute that leaves the value unchanged
#: moves the fence without a notification, so waiting on notifications alone could miss it.
FENCE_POLL_SECONDS = 0.05

REFRESH_REQUESTS_SENT = Counter(
    "freshviews_serving_refresh_requests_total", "Refresh requests sent to the subscribers after a miss"
)


class TooManyMissesError(RuntimeError):
    """The process is already waiting on ``max_pending`` distinct keys; the reader gets 503."""


class VersionNotReachedError(RuntimeError):
    """``min_version`` was not reached in time; ``current`` is what the cache holds."""

    def __init__(self, current: Snapshot, wanted: int) -> None:
        super().__init__(f"the cache holds version {current.fence} of {current.key!r}, not yet {wanted}")
        self.current = current


class Refresher:
    """Single-flight refresh requests and bounded waits for a key to appear or reach a version."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        hub: UpdateHub,
        *,
        miss_wait: float,
        version_wait: float,
        max_pending: int,
        maxlen: int,
        deadline: Callable[[], AbstractAsyncContextManager[None]],
    ) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        self._redis = redis
        self._keys = keys
        self._hub = hub
        self._miss_wait = miss_wait
        self._version_wait = version_wait
        self._max_pending = max_pending
        self._maxlen = maxlen
        #: Wraps every Redis call: bounded in time, failures become CacheUnavailableError.
        self._deadline = deadline
        self._inflight: dict[str, asyncio.Task[Snapshot | None]] = {}

    @property
    def pending(self) -> int:
        return len(self._inflight)

    async def fetch(self, view_key: str) -> Snapshot | None:
        """Ask the subscribers for ``view_key`` (once per process at a time); its snapshot, or None if it did not
        arrive within ``miss_wait``. Raises TooManyMissesError, or CacheUnavailableError when Redis fails."""
        # Shielded: a reader that goes away must not cancel the request the other readers share.
        return await asyncio.shield(self._start(view_key))

    def request(self, view_key: str) -> None:
        """Ask for ``view_key`` without waiting (a stream wants it, its update will come by the hub)."""
        with contextlib.suppress(TooManyMissesError):
            self._start(view_key)

    def _start(self, view_key: str) -> asyncio.Task[Snapshot | None]:
        task = self._inflight.get(view_key)
        if task is None:
            if len(self._inflight) >= self._max_pending:
                raise TooManyMissesError(f"{len(self._inflight)} keys are being refreshed already")
            task = asyncio.create_task(self._refresh(view_key), name=f"freshviews-refresh:{view_key}")
            self._inflight[view_key] = task
            task.add_done_callback(functools.partial(self._done, view_key))
        return task

    def _done(self, view_key: str, task: asyncio.Task[Snapshot | None]) -> None:
        if self._inflight.get(view_key) is task:
            del self._inflight[view_key]
        if not task.cancelled() and task.exception() is not None:
            # Retrieved here because every reader may have gone; the readers still waiting got it themselves.
            logger.debug("refresh of %r failed: %r", view_key, task.exception())

    async def _refresh(self, view_key: str) -> Snapshot | None:
        with self._hub.watch([view_key]) as box:
            async with self._deadline():
                await self._redis.xadd(
                    self._keys.refresh, {REFRESH_KEY: view_key}, maxlen=self._maxlen, approximate=True
                )
            REFRESH_REQUESTS_SENT.inc()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._miss_wait):
                    while True:
                        for snapshot in await box.take():
                            return snapshot
        # No notification: the hub may be resubscribing, or the value landed before we watched. Look once more.
        async with self._deadline():
            return (await read_snapshots(self._redis, self._keys, [view_key]))[0]

    async def wait_for_version(self, view_key: str, min_version: int) -> Snapshot | None:
        """The snapshot once the key's fence reaches ``min_version``; None if the key is not cached at all.

        Raises VersionNotReachedError after ``version_wait`` seconds, CacheUnavailableError when Redis fails.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._version_wait
        with self._hub.watch([view_key]) as box:
            while True:
                async with self._deadline():
                    snapshot = (await read_snapshots(self._redis, self._keys, [view_key]))[0]
                if snapshot is None:
                    snapshot = await self.fetch(view_key)
                    if snapshot is None:
                        return None
                if snapshot.fence >= min_version:
                    return snapshot
                remaining = give_up - loop.time()
                if remaining <= 0:
                    raise VersionNotReachedError(snapshot, min_version)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, FENCE_POLL_SECONDS)):
                        await box.take()

    async def aclose(self) -> None:
        """Cancel the refreshes in flight (at shutdown)."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
