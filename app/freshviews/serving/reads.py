"""Reads of cached values from Redis by the read routes, shared: concurrent readers of a key wait on one
round trip.

Why: a herd of readers of a key this process does not hold in memory (hundreds of event streams reconnecting
after a deploy, polls of a key just written or evicted) would otherwise send one read each; with large values
they queue behind each other on the connection pool past the read deadline, and get 503s. One read per key at
a time serves them all.

A reader joins a read in flight only if no newer version of the key was announced since that read began
(app/nearcache.py drops it from the shareable ones at the announcement): so it never gets a value older than
one announced before it arrived, as with a read of its own. This holds even while announcements go unheard
(a busy event loop answers the subscription's pings late, and memory is then not trusted) up to the age of
the read it joins, which the read deadline bounds: a herd arriving on a loaded process is when sharing
matters most. With ``cache_memory_keys`` 0 every read goes to Redis on its own.
The shared read runs as its own task, bounded by the read deadline, so a reader that gives up (its client
left) does not fail the others. Each value read is kept in memory unless a newer version was announced
meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager

from redis.asyncio import Redis

from freshviews.core.keys import Keys
from freshviews.serving.hub import Snapshot, read_snapshots
from freshviews.serving.memory import NearCache


class SharedReads:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        near: NearCache,
        deadline: Callable[[], AbstractAsyncContextManager[None]],
    ) -> None:
        """``deadline()`` bounds one read and turns its failures into CacheUnavailableError (Serving's)."""
        self._redis = redis
        self._keys = keys
        self._near = near
        self._deadline = deadline
        self._reads: set[asyncio.Task[None]] = set()

    async def current(self, view_keys: Sequence[str]) -> list[Snapshot | None]:
        """The current snapshot of each key (None: not cached): from memory where this process holds it,
        else from Redis (:meth:`read`)."""
        snapshots = [self._near.get(key) for key in view_keys]
        missing = [key for key, snapshot in zip(view_keys, snapshots, strict=True) if snapshot is None]
        if not missing:
            return snapshots
        read = dict(zip(missing, await self.read(missing), strict=True))
        return [read[key] if snapshot is None else snapshot for key, snapshot in zip(view_keys, snapshots, strict=True)]

    async def read(self, view_keys: Sequence[str]) -> list[Snapshot | None]:
        """The current snapshot of each key from Redis (None: not cached), sharing reads in flight; raises
        CacheUnavailableError when Redis does not answer within the deadline."""
        loop = asyncio.get_running_loop()
        results: dict[str, asyncio.Future[Snapshot | None]] = {}
        own: dict[str, asyncio.Future[Snapshot | None]] = {}
        for key in dict.fromkeys(view_keys):
            shared = self._near.joinable(key)
            if shared is None:
                shared = own[key] = loop.create_future()
                # Retrieved even if every reader gave up: no "exception was never retrieved" at collection.
                shared.add_done_callback(lambda f: f.cancelled() or f.exception())
                self._near.share(key, shared)
            results[key] = shared
        if own:
            task = asyncio.create_task(self._read(own), name="freshviews-cache-read")
            self._reads.add(task)
            task.add_done_callback(lambda t: self._ended(t, own))
        # shield: a reader that is cancelled leaves the read (and its other readers) alone.
        return [await asyncio.shield(results[key]) for key in view_keys]

    async def _read(self, results: dict[str, asyncio.Future[Snapshot | None]]) -> None:
        keys = list(results)
        for key in keys:
            self._near.reading(key)
        try:
            async with self._deadline():
                snapshots = await read_snapshots(self._redis, self._keys, keys)
        except BaseException as exc:
            for key, result in results.items():
                self._near.abandon(key)
                if isinstance(exc, Exception):
                    result.set_exception(exc)
                else:
                    result.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        for key, snapshot in zip(keys, snapshots, strict=True):
            if snapshot is None:
                self._near.abandon(key)
            else:
                self._near.offer(snapshot)
            results[key].set_result(snapshot)

    def _ended(self, task: asyncio.Task[None], results: dict[str, asyncio.Future[Snapshot | None]]) -> None:
        self._reads.discard(task)
        # A read cancelled before it began (at shutdown), or one that failed past its own handling: its readers
        # must not wait forever.
        for result in results.values():
            if not result.done():
                result.cancel()

    async def aclose(self) -> None:
        """Cancel the reads in flight (at shutdown); their readers see them cancelled."""
        for task in list(self._reads):
            task.cancel()
        await asyncio.gather(*self._reads, return_exceptions=True)
