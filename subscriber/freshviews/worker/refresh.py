"""Refresh requests from readers that missed: recompute exactly the keys asked for, once each per batch.

A reader (the app's cache route) that finds a valid key absent from Redis (a cold start, Redis restarted
empty) does not compute it itself: it adds the key to the ``<p>:refresh`` stream (field ``key``) and waits
briefly for the update notification. Subscribers read that stream through their consumer group (the same
group name as the change log), validate every key against the registry (nothing a client sent is trusted),
recompute the valid ones through the same fenced path as changes, and acknowledge.

Requests are hints, not changes: the stream is short (trimmed by the readers) and a request that is lost (a
subscriber killed mid-batch) costs one reader a 503 and a retry, so requests are neither reclaimed from dead
consumers nor dead-lettered. A bad key is dropped with a log line and a metric; a key that is already cached
when the request is read (another subscriber, the sweep) is not recomputed again, nor is a key whose recompute
failed before and whose backoff has not ended (freshviews/worker/failures.py): readers are told it fails.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Generic, TypeVar

from prometheus_client import Counter

from freshviews.core.clients import RedisClient
from freshviews.core.keys import REFRESH_KEY
from freshviews.core.views import InvalidKeyError, Registry, UnknownViewError, ViewKey
from freshviews.worker.failures import FailureBook
from freshviews.worker.groups import Entry, GroupReader
from freshviews.worker.recompute import Recomputer
from freshviews.worker.settings import SubscriberSettings
from freshviews.worker.store import CacheStore

logger = logging.getLogger(__name__)

Ctx = TypeVar("Ctx")

REFRESH_REQUESTS = Counter(
    "freshviews_refresh_requests_total",
    "Refresh requests read from readers that missed, by outcome (recomputed, cached, invalid, failed, backing_off)",
    ["outcome"],
)


@dataclass
class RefreshOutcome:
    entries: int = 0
    recomputed: int = 0
    cached: int = 0
    invalid: int = 0
    failed: int = 0
    #: Keys skipped because their last recompute failed and their backoff has not ended.
    backing_off: int = 0

    def add(self, other: RefreshOutcome) -> None:
        for counted in fields(self):
            setattr(self, counted.name, getattr(self, counted.name) + getattr(other, counted.name))


class RefreshConsumer(Generic[Ctx]):
    """This process's consumer of the refresh stream's group (the same group name as the change log's)."""

    def __init__(
        self,
        *,
        redis: RedisClient,
        registry: Registry[Ctx],
        store: CacheStore,
        recomputer: Recomputer[Ctx],
        settings: SubscriberSettings,
    ) -> None:
        self._redis = redis
        self._keys = settings.keys
        self._registry = registry
        self._store = store
        self._recomputer = recomputer
        self.group = settings.group
        self.failures = FailureBook(
            redis, self._keys, backoff=settings.refresh_backoff, backoff_max=settings.refresh_backoff_max
        )
        # A lost group is only recreated: readers whose requests went with it ask again.
        self.reader = GroupReader(redis, self._keys.refresh, settings)

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
            now_ms, known = await self.failures.states(list(wanted)) if wanted else (0, {})
            for name, state in known.items():
                if state.retry_at_ms > now_ms:
                    del wanted[name]
                    outcome.backing_off += 1
            result = await self._recomputer.run(wanted, trigger="refresh")
            outcome.recomputed = len(result.outcomes)
            outcome.failed = len(result.failures)
            for name, exc in result.failures.items():
                # The reader gets a 503 naming the failure, with the backoff as Retry-After; the sweep fills the
                # key once the source recovers, if no reader asks again first.
                logger.warning("refresh of %r failed: %s: %s", name, type(exc).__name__, exc)
            await self.failures.settle(result.failures, list(result.outcomes), known)
        if entries:
            await self._redis.xack(self._keys.refresh, self.group, *[entry_id for entry_id, _ in entries])
        for name in ("recomputed", "cached", "invalid", "failed", "backing_off"):
            if count := getattr(outcome, name):
                REFRESH_REQUESTS.labels(name).inc(count)
        return outcome

    async def step(self) -> None:
        """One step of the subscriber's refresh loop: own pending requests first, then new ones (waiting up to
        ``block_ms``)."""
        await self.reader.step(self.process)

    async def drain(self) -> RefreshOutcome:
        """Apply every request pending and new, then return (burst mode and tests)."""
        total = RefreshOutcome()

        async def process(entries: list[Entry]) -> None:
            total.add(await self.process(entries))

        await self.reader.drain(process)
        return total
