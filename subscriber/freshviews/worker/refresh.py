"""Refresh requests from readers that missed: recompute exactly the keys asked for, once each per batch.

A reader (the app's cache route) that finds a valid key absent from Redis (a cold start, Redis restarted
empty) does not compute it itself: it adds the key to the ``<p>:refresh`` stream (field ``key``) and waits
briefly for the update notification. Subscribers read that stream through their consumer group (the same
group name as the change log), validate every key against the registry (nothing a client sent is trusted),
recompute the valid ones through the same fenced path as changes, and acknowledge.

Requests are hints, not changes: the stream is short (trimmed by the readers) and a request that is lost (a
subscriber killed mid-batch) costs one reader a 503 and a retry, so requests are neither reclaimed from dead
consumers nor dead-lettered. A bad key is dropped with a log line and a metric; a key that is already cached
when the request is read (another subscriber, the sweep) is not recomputed again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from freshviews.core.keys import REFRESH_KEY, Keys
from freshviews.core.views import InvalidKeyError, Registry, UnknownViewError, ViewKey
from freshviews.worker.groups import Entry, ensure_group, read_group
from freshviews.worker.recompute import Recomputer
from freshviews.worker.store import CacheStore

logger = logging.getLogger(__name__)

REFRESH_REQUESTS = Counter(
    "freshviews_refresh_requests_total",
    "Refresh requests read from readers that missed, by outcome (recomputed, cached, invalid, failed)",
    ["outcome"],
)


@dataclass
class RefreshOutcome:
    entries: int = 0
    recomputed: int = 0
    cached: int = 0
    invalid: int = 0
    failed: int = 0


class RefreshConsumer:
    """One consumer of the refresh stream's consumer group."""

    def __init__(
        self,
        *,
        redis: Redis,
        keys: Keys,
        registry: Registry[Any],
        store: CacheStore,
        recomputer: Recomputer,
        group: str,
        consumer: str,
        batch_size: int = 500,
        block_ms: int = 1000,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._registry = registry
        self._store = store
        self._recomputer = recomputer
        self.group = group
        self.consumer = consumer
        self._batch_size = batch_size
        self._block_ms = block_ms
        # A previous life under the same consumer name may have left requests pending: read those first.
        self._own_pending_unknown = True

    async def ensure_group(self) -> bool:
        """Create the group (and the stream) if missing; True when it had to be created."""
        return await ensure_group(self._redis, self._keys.refresh, self.group)

    async def read(self, *, pending: bool = False, block: bool = True) -> list[Entry]:
        return await read_group(
            self._redis,
            self._keys.refresh,
            self.group,
            self.consumer,
            count=self._batch_size,
            block_ms=self._block_ms if block else None,
            pending=pending,
        )

    def _parse(self, entry: Entry) -> ViewKey | None:
        raw = entry[1].get(REFRESH_KEY)
        try:
            if raw is None:
                raise InvalidKeyError("no 'key' field")
            return self._registry.parse(raw.decode())
        except (UnicodeDecodeError, UnknownViewError, InvalidKeyError) as exc:
            logger.warning("dropping refresh request %s: %s", entry[0].decode(), exc)
            return None

    async def process(self, entries: Sequence[Entry]) -> RefreshOutcome:
        """Recompute the valid, still missing keys of ``entries`` (each once) and acknowledge every entry."""
        outcome = RefreshOutcome(entries=len(entries))
        wanted: dict[str, ViewKey] = {}
        for entry in entries:
            parsed = self._parse(entry)
            if parsed is None:
                outcome.invalid += 1
            else:
                wanted[parsed.key] = parsed
        if wanted:
            names = list(wanted)
            # A key filled since the request (the sweep, another subscriber, a change) needs no backend work.
            for name, digest in zip(names, await self._store.digests(names), strict=True):
                if digest is not None:
                    del wanted[name]
                    outcome.cached += 1
            result = await self._recomputer.run(wanted, trigger="refresh")
            outcome.recomputed = len(result.outcomes)
            outcome.failed = len(result.failures)
            for name, exc in result.failures.items():
                # The reader gets a 503 and retries; the sweep fills the key if the failure lasts.
                logger.warning("refresh of %r failed: %s: %s", name, type(exc).__name__, exc)
        if entries:
            await self._redis.xack(self._keys.refresh, self.group, *[entry_id for entry_id, _ in entries])
        for name in ("recomputed", "cached", "invalid", "failed"):
            if count := getattr(outcome, name):
                REFRESH_REQUESTS.labels(name).inc(count)
        return outcome

    async def step(self) -> None:
        """One read-and-process step of the subscriber's refresh loop (blocks up to ``block_ms``)."""
        try:
            if self._own_pending_unknown:
                while own := await self.read(pending=True, block=False):
                    await self.process(own)
                self._own_pending_unknown = False
            if batch := await self.read(block=True):
                self._own_pending_unknown = True  # until processed and acknowledged
                await self.process(batch)
                self._own_pending_unknown = False
        except ResponseError as exc:
            # NOGROUP, or (Redis >= 7) a blocked read told the stream was deleted under it.
            if "NOGROUP" not in str(exc) and "no longer exists" not in str(exc):
                raise
            # Redis restarted empty or the stream was deleted: recreate the group; readers simply ask again.
            logger.warning("refresh group missing (%s): recreating it", exc)
            await self.ensure_group()

    async def drain(self) -> RefreshOutcome:
        """Apply every request pending and new, then return (burst mode and tests)."""
        total = RefreshOutcome()
        while (batch := await self.read(pending=True, block=False)) or (batch := await self.read(block=False)):
            outcome = await self.process(batch)
            for name in ("entries", "recomputed", "cached", "invalid", "failed"):
                setattr(total, name, getattr(total, name) + getattr(outcome, name))
        self._own_pending_unknown = False
        return total
