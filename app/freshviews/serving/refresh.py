"""The miss path: a valid key that is not cached is asked of the subscribers, never computed here.

A miss (a cold start, Redis restarted empty) sends one refresh request per key to the subscribers
(``<p>:refresh``, see freshviews/worker/refresh.py), and the reader waits briefly for the update notification.
Requests are single flight per process (flights.py): however many readers miss a key at once, one request is
sent and they all share its answer; the keys one read misses together go in one pipeline and are waited for
together. A key whose recompute is failing (failures.py) is not asked for until its backoff ends: the readers
get its :class:`Failure` from :meth:`Refresher.failure` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager

from prometheus_client import Counter

from freshviews.core.clients import RedisClient
from freshviews.core.keys import REFRESH_KEY, Keys
from freshviews.serving.failures import Failure, FailureMemo, failures_of, queue_failure_reads, read_failures
from freshviews.serving.flights import Flight, Flights
from freshviews.serving.hub import UpdateHub
from freshviews.serving.snapshots import Read, Snapshot

REFRESH_REQUESTS_SENT = Counter(
    "freshviews_serving_refresh_requests_total", "Refresh requests sent to the subscribers after a miss"
)


class TooManyMissesError(RuntimeError):
    """The process is already waiting on ``max_pending`` distinct keys; the reader gets 503."""


class Refresher:
    """Single-flight refresh requests for keys not cached, and the bounded wait for their values."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        hub: UpdateHub,
        *,
        read: Read,
        deadline: Callable[[], AbstractAsyncContextManager[None]],
        miss_wait: float,
        max_pending: int,
        maxlen: int,
    ) -> None:
        """``read`` looks the keys up once more when no notification came; ``deadline()`` bounds the requests
        and turns their failures into CacheUnavailableError (both Serving's)."""
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        self._redis = redis
        self._keys = keys
        self._hub = hub
        self._read = read
        self._deadline = deadline
        self._miss_wait = miss_wait
        self._max_pending = max_pending
        self._maxlen = maxlen
        self._requests: Flights[Snapshot | None] = Flights(self._refresh, name="freshviews-refresh")
        self._failures = FailureMemo(max(max_pending, 1000))

    @property
    def pending(self) -> int:
        """Keys being refreshed now."""
        return len(self._requests)

    def failure(self, view_key: str) -> Failure | None:
        """Why ``view_key`` is not cached: its recompute failed last time it was asked for (the backoff may have
        ended since, as the read waited; then it is asked for again by the next read)."""
        return self._failures.get(view_key, ended=True)

    async def fetch(self, view_keys: Sequence[str]) -> list[Snapshot | None]:
        """Ask the subscribers for ``view_keys`` (once per process at a time); each key's snapshot, or None if it
        did not arrive within ``miss_wait`` or its recompute fails (see :meth:`failure`). Raises
        TooManyMissesError (and asks nothing) when the keys not asked for yet do not fit under ``max_pending``,
        CacheUnavailableError when Redis fails."""
        asking = [key for key in view_keys if self._failures.get(key) is None]
        found = {flight.key: await flight.wait() for flight in self._start(asking)}
        return [found.get(key) for key in view_keys]

    def request(self, view_keys: Sequence[str]) -> None:
        """Ask for ``view_keys`` without waiting (a stream wants them: their updates come by the hub)."""
        with contextlib.suppress(TooManyMissesError):
            self._start([key for key in view_keys if self._failures.get(key) is None])

    async def aclose(self) -> None:
        """Cancel the refreshes in flight (at shutdown)."""
        await self._requests.aclose()

    def _start(self, view_keys: Sequence[str]) -> list[Flight[Snapshot | None]]:
        new = [key for key in dict.fromkeys(view_keys) if key not in self._requests]
        if len(self._requests) + len(new) > self._max_pending:
            raise TooManyMissesError(f"{len(self._requests)} keys are being refreshed already")
        return self._requests.start(view_keys)

    async def _refresh(self, view_keys: list[str]) -> list[Snapshot | None]:
        found: dict[str, Snapshot | None] = {}
        # Watch before asking, so that an answer landing right after the request is not missed.
        with self._hub.watch(view_keys) as box:
            async with self._deadline(), self._redis.pipeline(transaction=False) as pipe:
                # With the requests, in the same round trip: what is known of these keys' failures (another
                # process may have learnt already that they fail: their readers need not wait).
                replies = queue_failure_reads(pipe, self._keys, view_keys)
                for key in view_keys:
                    pipe.xadd(self._keys.refresh, {REFRESH_KEY: key}, maxlen=self._maxlen, approximate=True)
                known = failures_of(view_keys, (await pipe.execute())[:replies])
            self._failures.remember(known, cleared=[key for key in view_keys if key not in known])
            found.update((key, None) for key, failure in known.items() if failure.remaining > 0)
            REFRESH_REQUESTS_SENT.inc(len(view_keys))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._miss_wait):
                    while len(found) < len(view_keys):
                        found.update((snapshot.key, snapshot) for snapshot in await box.take())
        # No notification: the hub may be resubscribing, or the value landed before we watched. Look once more.
        rest = [key for key in view_keys if key not in found]
        if rest:
            found.update(zip(rest, await self._read(rest), strict=True))
            # Still nothing: the recompute may just have failed, and its state says for how long.
            if still := [key for key in rest if found[key] is None]:
                async with self._deadline():
                    known = await read_failures(self._redis, self._keys, still)
                self._failures.remember(known, cleared=[key for key in still if key not in known])
        return [found[key] for key in view_keys]
