"""The write-path hook: append changes to the change log after the database commit."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from fastapi import Request
from redis.exceptions import RedisClusterException, RedisError

from freshviews.core.clients import RedisClient
from freshviews.core.events import FIELD, Change
from freshviews.core.keys import Keys
from freshviews.publish import metrics

logger = logging.getLogger(__name__)


class Publisher:
    """Appends :class:`Change` events to the change log.

    Call it after the transaction committed. It never raises into the write route (except
    cancellation): a failure or a timeout is logged and counted, and the subscriber's sweep repairs the
    views the lost change would have refreshed. Build one in the app's lifespan and share it.
    """

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        *,
        maxlen: int = 100_000,
        timeout: float = 0.05,
        enabled: bool = True,
    ) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be >= 1")
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        self._redis = redis
        self._keys = keys
        self._maxlen = maxlen
        self._timeout = timeout
        self.enabled = enabled

    async def publish(self, *changes: Change) -> list[str]:
        """Publish changes in one round trip; return their stream ids (empty when publishing failed)."""
        return await self.publish_many(changes)

    async def publish_many(self, changes: Iterable[Change]) -> list[str]:
        batch = list(changes)
        if not batch or not self.enabled:
            return []
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for change in batch:
                        # Approximate trimming (~) is O(1) amortised; exact trimming would cost a scan.
                        pipe.xadd(self._keys.changes, {FIELD: change.encode()}, maxlen=self._maxlen, approximate=True)
                    ids = await pipe.execute()
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            reason = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            for change in batch:
                metrics.CHANGES_PUBLISH_FAILED.labels(change.entity, reason).inc()
            logger.warning(
                "could not publish %d change(s) (%s: %s); the sweep will repair the affected views",
                len(batch),
                reason,
                exc,
            )
            return []
        finally:
            metrics.PUBLISH_SECONDS.observe(time.perf_counter() - started)
        for change in batch:
            metrics.CHANGES_PUBLISHED.labels(change.entity).inc()
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


def get_publisher(request: Request) -> Publisher:
    """FastAPI dependency: the :class:`Publisher` the app's lifespan put in its state as ``publisher``."""
    publisher = getattr(request.state, "publisher", None)
    if not isinstance(publisher, Publisher):
        raise RuntimeError("no Publisher in the app state: yield {'publisher': Publisher(...)} from the lifespan")
    return publisher
