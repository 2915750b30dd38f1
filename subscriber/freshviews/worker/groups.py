"""Reading a stream through a consumer group: the one reader behind the change log and the refresh requests.

A :class:`GroupReader` is one consumer of one stream's group. Each :meth:`~GroupReader.step` hands this
consumer's own unacknowledged entries to ``process`` before any new one, then one batch of new entries; and when
Redis says the group is gone (Redis restarted empty, the stream deleted, the group destroyed) it recreates the
group instead of failing, so both streams recover the same way. It also reads the group's state (pending count,
position) and tells when the stream was trimmed past entries the group never read.

Own entries first, and only in the step that reads new ones: an entry between its read and its acknowledgement is
pending too, and nothing else could tell it from one a crash left behind (a batch that raised, or this consumer's
previous life under the same name).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import ResponseError

from freshviews.core.clients import RedisClient
from freshviews.core.connections import error_code
from freshviews.worker.settings import SubscriberSettings

logger = logging.getLogger(__name__)

#: One stream entry as redis-py returns it: (id, fields).
Entry = tuple[bytes, dict[bytes, bytes]]
#: What a reader hands its batches to; it acknowledges them (an entry it does not stays pending and comes back).
Process = Callable[[list[Entry]], Awaitable[object]]

#: Error codes meaning the group (or its stream) no longer exists. NOGROUP answers a read on a missing group;
#: UNBLOCKED answers a read that was blocked when its stream was deleted, on Redis >= 7 (Redis 6.2 lets that read
#: time out empty, and the next one is NOGROUP).
_GROUP_GONE = frozenset({"NOGROUP", "UNBLOCKED"})


def group_gone(exc: BaseException) -> bool:
    """Whether a Redis error says that the consumer group or its stream no longer exists."""
    return error_code(exc) in _GROUP_GONE


async def ensure_group(redis: RedisClient, stream: str, group: str) -> bool:
    """Create ``group`` on ``stream`` (and the stream) if missing; True when it had to be created.

    A new group starts at the beginning of what the stream retains: replaying is safe (recomputes are
    idempotent and coalesced), skipping is not.
    """
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if error_code(exc) == "BUSYGROUP":
            return False
        raise
    logger.info("created consumer group %r on %s", group, stream)
    return True


class GroupReader:
    """This process's consumer (``settings.consumer``) of the group ``settings.group`` on ``stream``.

    Args:
        coalesce: while reads come back full (a backlog), keep reading without waiting until a batch holds this
            many entries, so that one batch spans a burst; at most ``batch_size`` (no coalescing) by default.
        on_lost: called each time Redis says the group is gone, before it is recreated (the change log sweeps:
            whatever the lost group had not delivered is unknown).
    """

    def __init__(
        self,
        redis: RedisClient,
        stream: str,
        settings: SubscriberSettings,
        *,
        coalesce: int = 0,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self._redis = redis
        self.stream = stream
        self.group = settings.group
        self.consumer = settings.consumer
        self._count = settings.batch_size
        self._block_ms = settings.block_ms
        self._coalesce = max(coalesce, settings.batch_size)
        self._on_lost = on_lost
        # A new reader cannot know what its previous life under the same name left pending: look first.
        self._own_pending_unknown = True

    async def ensure(self) -> bool:
        """Create the group (and the stream) if missing; True when it had to be created."""
        return await ensure_group(self._redis, self.stream, self.group)

    async def read(self, *, pending: bool = False, block: bool = True) -> list[Entry]:
        """One batch: new entries (waiting up to ``block_ms`` with ``block``), or with ``pending`` this consumer's
        own delivered but unacknowledged ones. Raises what Redis answers, NOGROUP included."""
        reply: Any = await self._redis.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: "0" if pending else ">"},
            count=self._count,
            block=None if pending or not block else self._block_ms,
        )
        entries: list[Entry] = reply[0][1] if reply else []
        if entries and not pending:
            self._own_pending_unknown = True  # delivered to us now: pending until someone acknowledges them
        return entries

    async def step(self, process: Process, *, block: bool = True) -> int:
        """Hand this consumer's pending entries, then one batch of new ones, to ``process``; return how many.

        A lost group is recreated (and ``on_lost`` called) and the step returns 0: the next one reads from the new
        group. Any other Redis error propagates, and whatever was not processed stays pending for the next step.
        """
        try:
            return await self._step(process, block=block)
        except ResponseError as exc:
            if not group_gone(exc):
                raise
            logger.warning("consumer group %r on %s is gone (%s): recreating it", self.group, self.stream, exc)
            if self._on_lost is not None:
                self._on_lost()
            await self.ensure()
            return 0

    async def drain(self, process: Process) -> int:
        """Hand everything pending and new to ``process`` without waiting, then return how many entries it got."""
        handled = 0
        while count := await self.step(process, block=False):
            handled += count
        return handled

    async def info(self) -> dict[str, Any] | None:
        """This group's entry of XINFO GROUPS (pending, last-delivered-id, lag on Redis >= 7); None if none."""
        try:
            groups = await self._redis.xinfo_groups(self.stream)
        except ResponseError:
            return None  # no stream yet
        return next((g for g in groups if g["name"] in (self.group, self.group.encode())), None)

    async def tail(self) -> bytes:
        """The id of the newest entry ever added to the stream (``0-0`` before the first)."""
        try:
            info = await self._redis.xinfo_stream(self.stream)
        except ResponseError:
            return b"0-0"  # no stream yet
        return bytes(info["last-generated-id"])

    async def applied(self) -> tuple[int, int]:
        """The id (as :func:`stream_id` parses it) up to which this group has delivered and acknowledged every
        entry: its position, or just below the oldest entry still pending; ``(0, 0)`` without a group."""
        group = await self.info()
        if group is None:
            return (0, 0)
        position = stream_id(group["last-delivered-id"])
        if not group["pending"]:
            return position
        oldest = (await self._redis.xpending(self.stream, self.group)).get("min")
        if oldest is None:
            return position
        ms, seq = stream_id(oldest)
        return min(position, (ms, seq - 1) if seq else (ms - 1, 2**64 - 1))

    async def trimmed_gap(self, *, reported: bytes | None = None) -> bytes | None:
        """The oldest entry id kept if the stream lost entries this group never read, else None.

        ``reported`` is the id this returned last time: until the group reads past it, the hole is the same
        one (a consumer that is still behind keeps seeing the stream trimmed ahead of it).

        MAXLEN trimming (or a subscriber down for long) can drop entries before the group read them. Nothing
        unread was lost while the oldest entry kept is at or before the group's position. Past it, Redis 7
        tells by its counters (entries added minus entries the group read, against the entries kept); Redis 6.2
        has no counters, so there any trimming past the position counts as a gap (at worst, one sweep too many).
        A group that never read anything (position 0-0) is new, and reports no gap.
        """
        try:
            info = await self._redis.xinfo_stream(self.stream)
        except ResponseError:
            return None  # no stream yet
        group = await self.info()
        first = info.get("first-entry")
        if group is None or not first:
            return None
        position = stream_id(group["last-delivered-id"])
        if position == (0, 0) or stream_id(first[0]) <= position:
            return None
        if reported is not None and position < stream_id(reported):
            return None
        added, read = info.get("entries-added"), group.get("entries-read")
        if added is not None and read is not None and int(added) - int(read) <= int(info["length"]):
            return None
        return bytes(first[0])

    async def _step(self, process: Process, *, block: bool) -> int:
        handled = 0
        if self._own_pending_unknown:
            while own := await self.read(pending=True):
                await process(own)
                handled += len(own)
            self._own_pending_unknown = False
        if batch := await self._read_backlog(block=block):
            await process(batch)
            handled += len(batch)
            self._own_pending_unknown = False  # acknowledged: read() raised the flag, and nothing raised since
        return handled

    async def _read_backlog(self, *, block: bool) -> list[Entry]:
        """A read, extended with the backlog behind it while reads come back full, up to ``coalesce`` entries."""
        batch = await self.read(block=block)
        while batch and len(batch) % self._count == 0 and len(batch) < self._coalesce:
            more = await self.read(block=False)
            if not more:
                break
            batch.extend(more)
        return batch


def stream_id(value: bytes | str) -> tuple[int, int]:
    """A stream entry id as a pair that compares in the stream's order."""
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
