"""The consistency sampler: recompute one key at a time, compare it with the cache, and classify what differs.

The sweep repairs every key on a timer; the sampler measures, continuously and cheaply, how fresh the cache is,
and finds the keys a declared dependency missed long before the next sweep. Each step recomputes one key and
compares its digest with the stored one; which key is :class:`~freshviews.worker.picks.KeyPicker`'s (every cached
key within two passes' worth of samples, and the rest preferring views whose entities changed recently).

A mismatch is not yet a fault: the change behind it may still be in the outbox, in the log, or in a batch being
applied. The sample read the stored value and its fence (with a ticket) before its compute read the source; the
mismatch is judged once every change committed before the compute ended has been applied: :data:`HOOK_GRACE` has
passed for writers that publish after their commit, the outbox holds no older row, and the consumer group has
acknowledged the log up to its tail as of then. Judged meanwhile in later steps, so that sampling goes on.

Why the fence decides: the stored value was computed from the source as it was at some moment after its fence's
ticket. If the source differed at the sample, some change committed between; it is applied by now, and its
recompute took a ticket above that fence, so the fence moved. A fence that did not move means that no change
explains the difference: *unexplained*, a missed dependency or a lost change. It is confirmed with a recompute on
a fresh ticket, repaired at once through the fenced write, counted per view and logged once per view per
:data:`LOG_EVERY` with the stale value's age and the latest changes to the view's entities.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from freshviews.core.clients import RedisClient
from freshviews.core.events import Change, ChangeDecodeError, decode
from freshviews.core.keys import TOMBSTONE
from freshviews.core.views import InvalidKeyError, Registry, UnknownViewError, View, ViewKey
from freshviews.worker import metrics
from freshviews.worker.freshness import Result, ViewTally
from freshviews.worker.groups import Entry, GroupReader, stream_id
from freshviews.worker.picks import KeyPicker
from freshviews.worker.recompute import serialize
from freshviews.worker.settings import SubscriberSettings
from freshviews.worker.store import CacheStore, PendingWrite, Stored, digest

if TYPE_CHECKING:
    from freshviews.outbox import Relay
    from freshviews.worker.throttle import Throttle

logger = logging.getLogger(__name__)

Ctx = TypeVar("Ctx")

#: How long after its commit a writer without an outbox (``Publisher``) may still be publishing, seconds.
HOOK_GRACE = 1.0
#: The longest a mismatch waits for the changes on their way; past it, it counts as explained (a backlog).
SETTLE_TIMEOUT = 30.0
#: One warning per view (unexplained) or for failed computes, at most this often, seconds.
LOG_EVERY = 60.0
#: Latest changes to a view's entities named in its warning, read from this many entries of the log's tail.
CHANGES_NAMED = 3
TAIL_READ = 200
#: Cached keys of views no longer served passed over in one step before it gives up.
MAX_SKIPS = 100
#: The summary in Redis is rewritten at most this often, seconds.
PUBLISH_EVERY = 2.0

#: Mismatches waiting to be judged at once; past it, a step only judges (sampling on would only queue more).
MAX_UNDECIDED = 1000


@dataclass(slots=True)
class _Undecided:
    """A sampled key whose cached value differed from its recompute, until its changes have had their time."""

    view_key: ViewKey
    #: What Redis held when the key was sampled (its ticket taken before the compute read the source).
    stored: Stored
    #: When the compute ended (unix time, monotonic): every change committed before must be applied first.
    since: float
    started: float
    pick: int
    #: The log's tail once every change committed before ``since`` is in the log.
    tail: bytes | None = None


class Sampler(Generic[Ctx]):
    """Samples the cached keys of ``registry`` one :meth:`step` at a time (the subscriber paces the steps)."""

    def __init__(
        self,
        *,
        redis: RedisClient,
        registry: Registry[Ctx],
        ctx: Ctx,
        store: CacheStore,
        reader: GroupReader,
        settings: SubscriberSettings,
        relay: Relay | None = None,
        seed: int | None = None,
        throttle: Throttle[Ctx] | None = None,
    ) -> None:
        self._redis = redis
        self._throttle = throttle
        self._keys = settings.keys
        self._registry = registry
        self._ctx = ctx
        self._store = store
        self._reader = reader
        self._relay = relay
        self._settings = settings
        self.picker = KeyPicker(store, registry, seed=seed)
        self._undecided: list[_Undecided] = []
        #: Keys sampled so far (a pick's number is recorded with what it found).
        self.picks = 0
        self._logged: dict[str, float] = {}
        self._published = 0.0
        self.tallies: dict[str, ViewTally] = {}
        #: Samples classified so far, every result included.
        self.samples = 0

    @property
    def undecided(self) -> int:
        """Mismatches sampled and not judged yet."""
        return len(self._undecided)

    def on_changes(self, changes: Sequence[Change]) -> None:
        """Called by the change consumer after a batch is applied: the views of its entities are busy now."""
        self.picker.on_changes(changes)

    async def step(self) -> bool:
        """Judge the mismatches whose changes have had their time, then sample one key; False when nothing was
        sampled (nothing cached yet, or :data:`MAX_UNDECIDED` mismatches wait to be judged)."""
        if self._undecided:
            await self._judge()
        if len(self._undecided) >= MAX_UNDECIDED:
            return False
        for _ in range(MAX_SKIPS):
            key = await self.picker.pick()
            if key is None:
                return False
            if any(u.view_key.key == key for u in self._undecided):
                continue  # judged already: a second sample would only see the first one's repair
            try:
                view_key = self._registry.parse(key)
                break
            except (UnknownViewError, InvalidKeyError):
                continue  # a key of a view no longer served: the sweep's to judge
        else:
            return False
        await self.sample(view_key)
        await self._publish()
        return True

    async def sample(self, view_key: ViewKey) -> Result | None:
        """Recompute ``view_key`` and compare it with the cache: fresh or failed at once; a mismatch waits to be
        judged by a later :meth:`step` (None)."""
        view = view_key.view
        self.picks += 1
        stored = await self._store.stored(view_key.key)
        try:
            data = await self._compute(view_key)
        except Exception as exc:
            return self._failed(view, view_key.key, exc)
        if _same(stored.digest, data):
            return self._count(view, Result.FRESH)
        self._undecided.append(_Undecided(view_key, stored, time.time(), time.monotonic(), self.picks))
        return None

    async def _compute(self, view_key: ViewKey) -> bytes | None:
        return serialize(await view_key.view.compute(self._ctx, **view_key.params))

    async def _judge(self) -> None:
        """Classify the mismatches whose changes on their way have all been applied (see the module's docstring)."""
        now = time.time()
        untailed = [u for u in self._undecided if u.tail is None and now >= u.since + HOOK_GRACE]
        if untailed:
            # Past the writers' grace, and with no outbox row older than the sample, every change committed before
            # it is in the log: the log's tail now is what the group must have applied.
            oldest = await self._oldest_outbox_row()
            tail = await self._reader.tail()
            for u in untailed:
                if oldest is None or oldest > u.since:
                    u.tail = tail
        applied = await self._reader.applied() if any(u.tail is not None for u in self._undecided) else None
        waiting: list[_Undecided] = []
        for u in self._undecided:
            if applied is not None and u.tail is not None and stream_id(u.tail) <= applied:
                await self._decide(u)
            elif time.monotonic() - u.started > SETTLE_TIMEOUT:
                # Still a backlog (or the outbox unreadable) after this long: changes on their way, not a fault.
                self._count(u.view_key.view, Result.EXPLAINED)
            else:
                waiting.append(u)
        self._undecided = waiting

    async def _decide(self, u: _Undecided) -> None:
        view, key = u.view_key.view, u.view_key.key
        # Asked before the stored value is read: a due recompute that lands in between then moves the fence.
        if self._throttle is not None and await self._throttle.is_due(key):
            # Its changes are applied and its recompute waits for the end of its view's minimum interval.
            self._count(view, Result.EXPLAINED)
            return
        now = await self._store.stored(key)
        if now.fence != u.stored.fence or now.digest != u.stored.digest:
            # A recompute landed since the sample (every change committed before it is applied, and each one's
            # recompute takes a ticket above the stored fence): what differed was on its way.
            self._count(view, Result.EXPLAINED)
            return
        # Nothing landed although the source differed when sampled: confirm with a recompute on a fresh ticket
        # (a compute that read a moment mid-change would otherwise be blamed on the dependencies).
        try:
            data = await self._compute(u.view_key)
        except Exception as exc:
            self._failed(view, key, exc)
            return
        if _same(now.digest, data):
            self._count(view, Result.EXPLAINED)
            return
        await self._store.write([PendingWrite(key, now.ticket, data)])
        age = max(0.0, (now.ticket - now.version) / 1e6) if now.version else 0.0  # Redis's clock, both
        await self._unexplained(view, key, age, u.pick)
        self._count(view, Result.UNEXPLAINED)

    async def _oldest_outbox_row(self) -> float | None:
        """When the oldest change still in the outbox was written (unix time): None when it is empty or there is
        no outbox, infinitely old when it cannot be read (its changes cannot be ruled out)."""
        if self._relay is None:
            return None
        try:
            status = await self._relay.status()
        except Exception as exc:  # the database away: the changes in it cannot be ruled out
            logger.debug("sampler: the outbox cannot be read (%s)", exc)
            return float("-inf")
        return None if status.rows == 0 else time.time() - status.oldest_seconds

    def _count(self, view: View[Any], result: Result) -> Result:
        self.samples += 1
        metrics.SAMPLES.labels(view.name, result.value).inc()
        tally = self.tallies.setdefault(view.name, ViewTally())
        tally.add(result)
        metrics.NINES.labels(view.name).set(tally.nines)
        return result

    def _failed(self, view: View[Any], key: str, exc: Exception) -> Result:
        if self._due("failed"):
            logger.warning("sampler: computing %s failed (%s: %s); skipped and counted", key, type(exc).__name__, exc)
        return self._count(view, Result.FAILED)

    def _due(self, topic: str) -> bool:
        now = time.monotonic()
        if now - self._logged.get(topic, -LOG_EVERY) < LOG_EVERY:
            return False
        self._logged[topic] = now
        return True

    async def _unexplained(self, view: View[Any], key: str, age: float, pick: int) -> None:
        metrics.STALE_AGE.labels(view.name).observe(age)
        tally = self.tallies.setdefault(view.name, ViewTally())
        tally.last_unexplained = {"key": key, "stale_s": round(age, 3), "at": round(time.time(), 3), "pick": pick}
        if not self._due(f"view:{view.name}"):
            return
        logger.warning(
            "sampler: %s was stale and no change on its way explains it (a missed dependency or a lost change): "
            "its cached value was written %.1fs ago; repaired. Latest changes to %s: %s",
            key, age, ", ".join(sorted(view.entities)) or "(none)", await self._latest_changes(view) or "none",
        )  # fmt: skip
        self._published = 0.0  # publish it now: check and /healthz should show it at once

    async def _latest_changes(self, view: View[Any]) -> str:
        entries: list[Entry] = await self._redis.xrevrange(self._keys.changes, count=TAIL_READ)  # type: ignore[assignment]
        named: list[str] = []
        for _, fields in entries:
            try:
                change = decode(fields)
            except ChangeDecodeError:
                continue
            if change.entity in view.entities:
                ago = max(0.0, time.time() - change.committed_ms / 1000)
                named.append(f"{change.op.name.lower()} {change.entity} {change.id} {ago:.1f}s ago")
            if len(named) == CHANGES_NAMED:
                break
        return "; ".join(named)

    # -- the summary ------------------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        return {
            "at": round(time.time(), 3),
            "consumer": self._settings.consumer,
            "rate": self._settings.sample_rate,
            "samples": self.samples,
            "picks": self.picks,
            "undecided": len(self._undecided),
            "keys": self.picker.cached,
            "views": {name: tally.summary() for name, tally in sorted(self.tallies.items())},
        }

    async def _publish(self) -> None:
        now = time.monotonic()
        if now - self._published < PUBLISH_EVERY:
            return
        self._published = now
        await self._redis.set(self._keys.sampler, json.dumps(self.summary()))


def _same(stored: bytes | None, data: bytes | None) -> bool:
    """Whether the stored digest is the recompute's (a MISSING recompute matches nothing cached or a tombstone)."""
    if data is None:
        return stored is None or stored == TOMBSTONE
    return stored == digest(data)
