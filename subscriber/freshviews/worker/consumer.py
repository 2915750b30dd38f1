"""Consuming the change log: read a batch, map changes to keys, coalesce, recompute, acknowledge.

A change is acknowledged only after every key it affects was written (or refused by the fence, which
means a newer value is already there). A change that cannot be decoded, or whose keys keep failing after
``max_attempts``, is copied to the dead-letter stream with its reason and then acknowledged, so one bad
change never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from freshviews.core.events import FIELD, Change, ChangeDecodeError, decode
from freshviews.core.keys import Keys
from freshviews.core.views import Registry, ViewKey
from freshviews.worker import metrics
from freshviews.worker.groups import Entry, ensure_group, read_group
from freshviews.worker.recompute import Recomputer
from freshviews.worker.store import WriteOutcome

logger = logging.getLogger(__name__)

#: Dead-letter entries keep at most this much of the original payload (the reason matters more than a 1 MB body).
DEAD_LETTER_PAYLOAD_BYTES = 4096


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
    failed_keys: dict[str, str] = field(default_factory=dict)


class ChangeConsumer:
    """One consumer of the change log's consumer group."""

    def __init__(
        self,
        *,
        redis: Redis,
        keys: Keys,
        registry: Registry[Any],
        ctx: Any,
        recomputer: Recomputer,
        group: str,
        consumer: str,
        batch_size: int = 500,
        block_ms: int = 1000,
        max_attempts: int = 3,
        retry_backoff: float = 0.1,
        max_deliveries: int = 5,
        reclaim_idle_ms: int = 30_000,
        dead_letter_maxlen: int = 10_000,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._registry = registry
        self._ctx = ctx
        self._recomputer = recomputer
        self.group = group
        self.consumer = consumer
        self._batch_size = batch_size
        self._block_ms = block_ms
        self._max_attempts = max_attempts
        self._retry_backoff = retry_backoff
        self._max_deliveries = max_deliveries
        self._reclaim_idle_ms = reclaim_idle_ms
        #: Entries being processed by this consumer right now: XAUTOCLAIM hands back our own entries too
        #: once they are idle long enough, and a slow batch must not be processed twice at once.
        self._in_flight: set[bytes] = set()
        self._dead_letter_maxlen = dead_letter_maxlen

    async def ensure_group(self) -> bool:
        """Create the consumer group (and the stream) if missing; True when it had to be created."""
        return await ensure_group(self._redis, self._keys.changes, self.group)

    async def trimmed_gap(self, *, reported: bytes | None = None) -> bytes | None:
        """The oldest change id kept if the log lost changes this group never read, else None.

        ``reported`` is the id this returned last time: until the group reads past it, the hole is the same
        one (a consumer that is still behind keeps seeing the log trimmed ahead of it).

        MAXLEN trimming (or a subscriber down for long) can drop changes before the group read them; only a
        sweep can repair what they would have refreshed. Nothing unread was lost while the oldest entry kept
        is at or before the group's position. Past it, Redis 7 tells by its counters (changes added minus
        changes the group read, against the entries kept); Redis 6.2 has no counters, so there any trimming
        past the position counts as a gap (at worst, one sweep too many). A group that never read anything
        (position 0-0) is new: an empty cache is warmed anyway.
        """
        try:
            info = await self._redis.xinfo_stream(self._keys.changes)
            groups = await self._redis.xinfo_groups(self._keys.changes)
        except ResponseError:
            return None  # no stream yet
        group = next((g for g in groups if g["name"] in (self.group, self.group.encode())), None)
        first = info.get("first-entry")
        if group is None or not first:
            return None
        position = _stream_id(group["last-delivered-id"])
        if position == (0, 0) or _stream_id(first[0]) <= position:
            return None
        if reported is not None and position < _stream_id(reported):
            return None
        added, read = info.get("entries-added"), group.get("entries-read")
        if added is not None and read is not None and int(added) - int(read) <= int(info["length"]):
            return None
        return bytes(first[0])

    async def read(self, *, pending: bool = False, block: bool = True) -> list[Entry]:
        """The next batch: new changes, or with ``pending`` this consumer's own unacknowledged ones."""
        return await read_group(
            self._redis,
            self._keys.changes,
            self.group,
            self.consumer,
            count=self._batch_size,
            block_ms=self._block_ms if block else None,
            pending=pending,
        )

    async def reclaim(self) -> list[Entry]:
        """Take over changes left pending by consumers idle longer than ``reclaim_idle_ms``.

        Changes delivered ``max_deliveries`` times without an acknowledgement are dead-lettered instead:
        they may be what crashes the subscriber.
        """
        reply = await self._redis.xautoclaim(
            self._keys.changes, self.group, self.consumer, self._reclaim_idle_ms, "0-0", count=self._batch_size
        )
        entries: list[Entry] = [(i, f) for i, f in reply[1] if i is not None and i not in self._in_flight]
        if not entries:
            return []
        metrics.RECLAIMED.inc(len(entries))
        logger.info("reclaimed %d change(s) left pending by an idle consumer", len(entries))
        details = await self._redis.xpending_range(
            self._keys.changes, self.group, entries[0][0], entries[-1][0], len(entries) * 2, self.consumer
        )
        deliveries = {d["message_id"]: int(d["times_delivered"]) for d in details}
        poison = [(e, deliveries.get(e[0], 0)) for e in entries if deliveries.get(e[0], 0) > self._max_deliveries]
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
            return await self._process(entries)
        finally:
            self._in_flight -= ids

    async def _process(self, entries: Sequence[Entry]) -> BatchOutcome:
        outcome = BatchOutcome(entries=len(entries))
        dead: list[DeadLetter] = []
        changes: dict[bytes, tuple[Entry, Change]] = {}
        for entry in entries:
            try:
                change = decode(entry[1])
            except ChangeDecodeError as exc:
                dead.append(DeadLetter(entry, "decode", str(exc), 1))
                continue
            if change.entity not in self._registry.entities:
                dead.append(
                    DeadLetter(entry, "unknown_entity", f"unknown entity {change.entity!r}: no view depends on it", 1)
                )
                continue
            metrics.CHANGES_CONSUMED.labels(change.entity).inc()
            changes[entry[0]] = (entry, change)

        affected: dict[bytes, dict[str, ViewKey]] = {}
        done: set[str] = set()
        errors: dict[bytes, str] = {}
        for attempt in range(1, self._max_attempts + 1):
            errors = {}
            for entry_id, (_, change) in changes.items():
                if entry_id in affected:
                    continue
                try:
                    affected[entry_id] = await self._registry.affected_keys(self._ctx, change)
                except Exception as exc:
                    errors[entry_id] = f"finding affected keys failed: {type(exc).__name__}: {exc}"
            todo: dict[str, ViewKey] = {}
            for keyset in affected.values():
                todo.update((k, v) for k, v in keyset.items() if k not in done)
            if attempt == 1:
                touched = Counter(key for keyset in affected.values() for key in keyset)
                for key in todo:
                    metrics.CHANGES_PER_RECOMPUTE.observe(touched[key])
            result = await self._recomputer.run(todo, trigger="change")
            done.update(result.outcomes)
            outcome.written += sum(o is WriteOutcome.WRITTEN for o in result.outcomes.values())
            outcome.fenced += sum(o is WriteOutcome.FENCED for o in result.outcomes.values())
            failed = {k: f"{type(e).__name__}: {e}" for k, e in result.failures.items()}
            for entry_id, keyset in affected.items():
                bad = [k for k in keyset if k in failed]
                if bad:
                    errors[entry_id] = "; ".join(f"recompute of {k!r} failed: {failed[k]}" for k in bad[:3])
            outcome.failed_keys = failed
            if not errors:
                break
            if attempt < self._max_attempts:
                logger.warning("attempt %d: %d change(s) not applied yet, retrying", attempt, len(errors))
                await asyncio.sleep(self._retry_backoff * 2 ** (attempt - 1))

        outcome.keys = len(done)
        now_ms = time.time() * 1000
        good: list[Entry] = []
        for entry_id, (entry, change) in changes.items():
            if entry_id in errors:
                dead.append(DeadLetter(entry, "recompute", errors[entry_id], self._max_attempts))
                continue
            good.append(entry)
            metrics.COMMIT_TO_CACHE.observe(max(0.0, now_ms - change.committed_ms) / 1000)
        await self._settle(good, dead)
        outcome.acked = len(good) + len(dead)
        outcome.dead_lettered = len(dead)
        return outcome

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
                    maxlen=self._dead_letter_maxlen,
                    approximate=True,
                )
            pipe.xack(self._keys.changes, self.group, *[e[0] for e in good], *[d.entry[0] for d in dead])
            await pipe.execute()
        for letter in dead:
            metrics.DEAD_LETTERS.labels(letter.kind).inc()
            logger.error("dead-lettered change %s (%s): %s", letter.entry[0].decode(), letter.kind, letter.reason[:300])


def _stream_id(value: bytes | str) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
