"""The sweep: recompute every live key, write only what differs, and count each difference as a repair.

It is the safety net under the change log: a change that was never published (Redis was down at commit
time, the backend died between commit and publish), trimmed from the log, or lost with a Redis restart is
repaired within one sweep interval. Sweeps are paced (``rate`` keys/s, their own small concurrency) so that
they never hammer the backend, and only one subscriber of a group sweeps at a time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Generic, TypeVar

from redis.typing import EncodableT, FieldT

from freshviews.core.clients import RedisClient
from freshviews.core.keys import TOMBSTONE
from freshviews.core.views import InvalidKeyError, Registry, UnknownViewError, ViewKey
from freshviews.worker import metrics
from freshviews.worker.lease import Lease
from freshviews.worker.recompute import Recomputer
from freshviews.worker.settings import SubscriberSettings
from freshviews.worker.store import CacheStore, WriteOutcome

logger = logging.getLogger(__name__)

Ctx = TypeVar("Ctx")

#: Failed keys a sweep names in its log line and its record; the count covers the rest.
MAX_NAMED_FAILURES = 5
#: Reasons a sweep runs for on purpose: their repairs are expected (an empty cache being filled, say).
ROUTINE = frozenset({"warm", "recover", "once", "gap"})


@dataclass
class SweepResult:
    keys: int = 0
    repaired: int = 0
    deleted: int = 0
    unchanged: int = 0
    fenced: int = 0
    failed: int = 0
    seconds: float = 0.0
    reason: str = ""
    #: Stopped by shutdown before every key was visited.
    interrupted: bool = False
    #: Stopped because its lease was lost (expired or taken while Redis was away): owed again.
    lock_lost: bool = False
    #: The first keys that failed (at most ``MAX_NAMED_FAILURES``), each with its reason.
    failures: dict[str, str] = field(default_factory=dict)


def _named(result: SweepResult) -> str:
    if not result.failures:
        return ""
    more = result.failed - len(result.failures)
    named = "; ".join(f"{key}: {reason}" for key, reason in result.failures.items())
    return f" ({named}{f'; and {more} more' if more > 0 else ''})"


def _stopped(result: SweepResult) -> str:
    if result.lock_lost:
        return " stopped: its lease was lost"
    return " interrupted by shutdown" if result.interrupted else ""


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Sweeper(Generic[Ctx]):
    """The repair pass of one subscriber (``lease``, with ``settings.consumer`` as its token, is held while it
    sweeps: see :mod:`freshviews.worker.lease`), at most
    ``settings.sweep_rate`` keys per second, ``chunk`` keys per round of recomputes."""

    def __init__(
        self,
        *,
        redis: RedisClient,
        registry: Registry[Ctx],
        ctx: Ctx,
        store: CacheStore,
        recomputer: Recomputer[Ctx],
        settings: SubscriberSettings,
        chunk: int = 100,
    ) -> None:
        if chunk < 1:
            raise ValueError("chunk must be >= 1")
        self._redis = redis
        self._keys = settings.keys
        self._registry = registry
        self._ctx = ctx
        self._store = store
        self._recomputer = recomputer
        self._rate = settings.sweep_rate
        self._chunk = chunk
        #: The group's sweep lock, as this subscriber's lease.
        self.lease = Lease(redis, self._keys.sweep_lock, settings.consumer, ttl=settings.sweep_lock_ttl)

    async def _targets(self) -> tuple[dict[str, ViewKey], set[str]]:
        """Every enumerated key, plus cached keys no longer enumerated (recomputed too: usually they are gone,
        and a recompute, not a blind delete, is what keeps a key created since the enumeration alive)."""
        live = await self._registry.all_keys(self._ctx)
        strays = [k for k in await self._store.cached_view_keys() if k not in live]
        targets = dict(live)
        for key, stored in zip(strays, await self._store.digests(strays), strict=True):
            if stored == TOMBSTONE:
                continue
            try:
                targets[key] = self._registry.parse(key)
            except (UnknownViewError, InvalidKeyError) as exc:
                logger.warning("cached key %r matches no view (%s); leaving it alone", key, exc)
        return targets, set(live)

    async def sweep(
        self,
        reason: str,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        lost: Callable[[], bool] = lambda: False,
    ) -> SweepResult:
        """One pass; ``should_stop`` (shutdown) and ``lost`` (the lease) are looked at before each chunk."""
        started = time.perf_counter()
        targets, live = await self._targets()
        result = SweepResult(keys=len(targets), reason=reason)
        for names in _chunks(list(targets), self._chunk):
            if lost():
                result.lock_lost = True
                break
            if should_stop():
                result.interrupted = True
                break
            chunk_started = time.perf_counter()
            outcome = await self._recomputer.run({k: targets[k] for k in names}, trigger="sweep")
            result.failed += len(outcome.failures)
            for key, exc in outcome.failures.items():
                if len(result.failures) < MAX_NAMED_FAILURES:
                    result.failures[key] = f"{type(exc).__name__}: {exc}"[:200]
            for key, written in outcome.outcomes.items():
                if written is WriteOutcome.WRITTEN:
                    result.repaired += 1
                    result.deleted += key not in live
                    metrics.SWEEP_REPAIRS.labels(targets[key].view.name).inc()
                elif written is WriteOutcome.UNCHANGED:
                    result.unchanged += 1
                else:
                    result.fenced += 1
            # Pacing: a chunk never goes faster than `rate` keys per second.
            await asyncio.sleep(max(0.0, len(names) / self._rate - (time.perf_counter() - chunk_started)))
        result.seconds = round(time.perf_counter() - started, 3)
        if not (result.interrupted or result.lock_lost):
            metrics.SWEEPS.labels(reason).inc()
            metrics.SWEEP_SECONDS.observe(result.seconds)
        fields: dict[FieldT, EncodableT] = {"at": str(time.time())}
        for name, value in asdict(result).items():
            fields[name] = json.dumps(value) if isinstance(value, dict) else str(value)
        await self._redis.hset(self._keys.sweep, mapping=fields)
        if not result.interrupted:
            # Every key was computed once (the failed ones aside, which readers then miss): the cache is warm.
            await self._redis.set(self._keys.warm, fields["at"])
        # A timer sweep that repaired something found a change that never reached the cache: worth a warning.
        unexpected = result.failed or (result.repaired and reason not in ROUTINE)
        (logger.warning if unexpected else logger.info)(
            "sweep (%s)%s: %d keys, %d repaired (%d deleted), %d unchanged, %d fenced, %d failed in %.2fs%s",
            reason, _stopped(result), result.keys, result.repaired,
            result.deleted, result.unchanged, result.fenced, result.failed, result.seconds, _named(result),
        )  # fmt: skip
        return result
