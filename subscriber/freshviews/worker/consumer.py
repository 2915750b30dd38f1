"""Consuming the change log: read a batch, map changes to keys, coalesce, recompute, acknowledge.

A change is acknowledged only after every key it affects was written (or refused by the fence, which
means a newer value is already there), or recorded as due at the end of its view's minimum interval
(:mod:`freshviews.worker.throttle`). A change that cannot be decoded, or whose keys keep failing after
``max_attempts``, is copied to the dead-letter stream with its reason and then acknowledged, so one bad
change never stops the others. Reading (own pending changes first, a lost group recreated) is the
:class:`~freshviews.worker.groups.GroupReader`'s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from redis.exceptions import ResponseError

from freshviews.core.clients import RedisClient
from freshviews.core.events import FIELD, Change, ChangeDecodeError, decode
from freshviews.core.views import Registry, ViewKey
from freshviews.worker import metrics
from freshviews.worker.groups import Entry, GroupReader, group_gone
from freshviews.worker.recompute import Recomputer
from freshviews.worker.settings import SubscriberSettings
from freshviews.worker.store import WriteOutcome
from freshviews.worker.throttle import Throttle

logger = logging.getLogger(__name__)

Ctx = TypeVar("Ctx")

#: Dead-letter entries keep at most this much of the original payload (the reason matters more than a 1 MB body).
DEAD_LETTER_PAYLOAD_BYTES = 4096
#: Changes gathered into one batch while a backlog exists, so that a burst costs one recompute per key.
MAX_COALESCE = 20_000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    entry: Entry
    kind: str
    reason: str
    attempts: int


@dataclass
class BatchOutcome:
    entries: int = 0
    acked: int = 0
    dead_lettered: int = 0
    keys: int = 0
    written: int = 0
    fenced: int = 0
    #: Keys put off to the end of their view's minimum interval.
    deferred: int = 0
    failed_keys: dict[str, str] = field(default_factory=dict)


class ChangeConsumer(Generic[Ctx]):
    """This process's consumer of the change log's group: reads, applies and acknowledges batches of changes.

    ``on_group_lost`` is called when Redis says the group is gone, before it is recreated: the changes the lost
    group had not delivered are unknown, so the subscriber sweeps. ``on_changes`` is called with a batch's changes
    once it is applied (the sampler prefers the views they touch).
    """

    def __init__(
        self,
        *,
        redis: RedisClient,
        registry: Registry[Ctx],
        ctx: Ctx,
        recomputer: Recomputer[Ctx],
        settings: SubscriberSettings,
        on_group_lost: Callable[[], None] | None = None,
        on_changes: Callable[[Sequence[Change]], None] | None = None,
        throttle: Throttle[Ctx] | None = None,
    ) -> None:
        self._redis = redis
        self._throttle = throttle
        self._on_changes = on_changes
        self._keys = settings.keys
        self._registry = registry
        self._ctx = ctx
        self._recomputer = recomputer
        self._settings = settings
        self.group = settings.group
        self.consumer = settings.consumer
        self.reader = GroupReader(redis, self._keys.changes, settings, coalesce=MAX_COALESCE, on_lost=on_group_lost)
        #: Batches applied so far (burst mode reports it).
        self.batches = 0
        #: Entries being processed by this consumer right now: XAUTOCLAIM hands back our own entries too
        #: once they are idle long enough, and a slow batch must not be processed twice at once.
        self._in_flight: set[bytes] = set()

    async def read(self, *, pending: bool = False, block: bool = True) -> list[Entry]:
        """One batch read outside :meth:`step`: new changes, or with ``pending`` this consumer's own
        unacknowledged ones. They stay pending until :meth:`process` acknowledges them."""
        return await self.reader.read(pending=pending, block=block)

    async def step(self) -> int:
        """One step of the consume loop: own pending changes first, then one batch of new ones (a backlog
        coalesced into it), each applied; returns how many changes were handled."""
        return await self.reader.step(self.process)

    async def drain(self) -> int:
        """Burst mode: apply everything pending and new, then return the number of changes handled."""
        return await self.reader.drain(self.process)

    async def update_gauges(self) -> None:
        """Set the pending and lag gauges from the group's state."""
        group = await self.reader.info()
        if group is None:
            return
        metrics.PENDING.set(group["pending"])
        if group.get("lag") is not None:  # Redis >= 7 only
            metrics.STREAM_LAG.set(group["lag"])

    async def reclaim(self) -> list[Entry]:
        """Take over changes left pending by consumers idle longer than ``reclaim_idle_ms``.

        Changes delivered ``max_deliveries`` times without an acknowledgement are dead-lettered instead:
        they may be what crashes the subscriber.
        """
        settings = self._settings
        try:
            reply = await self._redis.xautoclaim(
                self._keys.changes,
                self.group,
                self.consumer,
                settings.reclaim_idle_ms,
                "0-0",
                count=settings.batch_size,
            )
        except ResponseError as exc:
            if not group_gone(exc):
                raise
            return []  # nothing is pending in a group that is gone; the consume loop recreates it
        entries: list[Entry] = [(i, f) for i, f in reply[1] if i is not None and i not in self._in_flight]
        if not entries:
            return []
        metrics.RECLAIMED.inc(len(entries))
        logger.info("reclaimed %d change(s) left pending by an idle consumer", len(entries))
        details = await self._redis.xpending_range(
            self._keys.changes, self.group, entries[0][0], entries[-1][0], len(entries) * 2, self.consumer
        )
        deliveries = {d["message_id"]: int(d["times_delivered"]) for d in details}
        poison = [(e, deliveries.get(e[0], 0)) for e in entries if deliveries.get(e[0], 0) > settings.max_deliveries]
        if poison:
            await self._settle(
                [],
                [DeadLetter(e, "redelivered", f"delivered {n} times without being acknowledged", n) for e, n in poison],
            )
        poison_ids = {e[0] for e, _ in poison}
        return [e for e in entries if e[0] not in poison_ids]

    async def process(self, entries: Sequence[Entry]) -> BatchOutcome:
        """Apply one batch. Each affected key is recomputed once, however many changes in the batch touch it."""
        ids = {entry_id for entry_id, _ in entries}
        self._in_flight |= ids
        try:
            outcome = await self._process(entries)
        finally:
            self._in_flight -= ids
        self.batches += 1
        return outcome

    async def _process(self, entries: Sequence[Entry]) -> BatchOutcome:
        outcome = BatchOutcome(entries=len(entries))
        dead: list[DeadLetter] = []
        ignored: list[Entry] = []
        batch: list[tuple[Entry, Change]] = []
        for entry in entries:
            try:
                change = decode(entry[1])
            except ChangeDecodeError as exc:
                dead.append(DeadLetter(entry, "decode", str(exc), 1))
                continue
            if change.entity not in self._registry.entities:
                # A change no view depends on (a capture of more tables than the views use): nothing to do.
                metrics.CHANGES_IGNORED.labels(change.entity).inc()
                ignored.append(entry)
                continue
            metrics.CHANGES_CONSUMED.labels(change.entity).inc()
            batch.append((entry, change))
        invalid: dict[int, str] = {}
        errors = await self._apply([change for _, change in batch], outcome, invalid)
        for index, reason in invalid.items():
            dead.append(DeadLetter(batch[index][0], "invalid", reason, 1))
        now_ms = time.time() * 1000
        good: list[Entry] = list(ignored)
        for index, (entry, change) in enumerate(batch):
            if index in invalid:
                continue
            if index in errors:
                dead.append(DeadLetter(entry, "recompute", errors[index], self._settings.max_attempts))
                continue
            good.append(entry)
            metrics.COMMIT_TO_CACHE.observe(max(0.0, now_ms - change.committed_ms) / 1000)
        await self._settle(good, dead)
        if self._on_changes is not None and batch:
            self._on_changes([change for _, change in batch])
        outcome.acked = len(good) + len(dead)
        outcome.dead_lettered = len(dead)
        return outcome

    async def _apply(self, changes: list[Change], outcome: BatchOutcome, invalid: dict[int, str]) -> dict[int, str]:
        """Recompute every key ``changes`` affect, each once, retrying what fails; return the changes (by index)
        that could still not be applied, with the reason. Changes naming no valid key go to ``invalid``."""
        keys: dict[str, ViewKey] = {}
        sources: dict[str, set[int]] = {}
        unresolved = list(range(len(changes)))
        done: set[str] = set()
        errors: dict[int, str] = {}
        max_attempts = self._settings.max_attempts
        for attempt in range(1, max_attempts + 1):
            errors = {}
            if unresolved:
                # One resolution for the whole batch: declarations with no query, each view's function once.
                found = await self._registry.affected(self._ctx, [changes[i] for i in unresolved])
                keys.update(found.keys)
                for key, named_by in found.sources.items():
                    sources.setdefault(key, set()).update(unresolved[i] for i in named_by)
                invalid.update((unresolved[i], reason) for i, reason in found.invalid.items())
                retry: set[int] = set()
                for view, (exc, indexes) in found.failed.items():
                    for i in indexes:
                        retry.add(unresolved[i])
                        errors[unresolved[i]] = f"finding affected keys of {view!r} failed: {type(exc).__name__}: {exc}"
                unresolved = sorted(retry)
            todo = {k: v for k, v in keys.items() if k not in done}
            if attempt == 1:
                for key in todo:
                    metrics.CHANGES_PER_RECOMPUTE.observe(len(sources.get(key, ())) or 1)
            if self._throttle is not None:
                todo, later = self._throttle.split(todo)
                await self._throttle.defer(later)
                done.update(later)
                outcome.deferred += len(later)
            started = time.monotonic()
            result = await self._recomputer.run(todo, trigger="change")
            if self._throttle is not None:
                self._throttle.computed({k: todo[k] for k in result.outcomes}, started)
            done.update(result.outcomes)
            outcome.written += sum(o is WriteOutcome.WRITTEN for o in result.outcomes.values())
            outcome.fenced += sum(o is WriteOutcome.FENCED for o in result.outcomes.values())
            outcome.failed_keys = {k: f"{type(e).__name__}: {e}" for k, e in result.failures.items()}
            for key, reason in outcome.failed_keys.items():
                # A key that fails is traced to the changes that named it.
                for index in sources.get(key, ()):
                    errors.setdefault(index, f"recompute of {key!r} failed: {reason}")
            if not errors:
                break
            if attempt < max_attempts:
                logger.warning("attempt %d: %d change(s) not applied yet, retrying", attempt, len(errors))
                await asyncio.sleep(self._settings.retry_backoff * 2 ** (attempt - 1))
        outcome.keys = len(done)
        return errors

    async def _settle(self, good: Sequence[Entry], dead: Sequence[DeadLetter]) -> None:
        """Dead-letter what failed and acknowledge everything, in one round trip."""
        if not good and not dead:
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            for letter in dead:
                entry_id, fields = letter.entry
                payload = fields.get(FIELD, b"")
                pipe.xadd(
                    self._keys.dead_letters,
                    {
                        "id": entry_id,
                        "reason": letter.reason[:1000],
                        "kind": letter.kind,
                        "attempts": letter.attempts,
                        "consumer": self.consumer,
                        "fields": ",".join(k.decode(errors="replace") for k in list(fields)[:10]),
                        "size": len(payload),
                        "payload": payload[:DEAD_LETTER_PAYLOAD_BYTES],
                    },
                    maxlen=self._settings.dead_letter_maxlen,
                    approximate=True,
                )
            pipe.xack(self._keys.changes, self.group, *[e[0] for e in good], *[d.entry[0] for d in dead])
            await pipe.execute()
        for letter in dead:
            metrics.DEAD_LETTERS.labels(letter.kind).inc()
            logger.error("dead-lettered change %s (%s): %s", letter.entry[0].decode(), letter.kind, letter.reason[:300])
