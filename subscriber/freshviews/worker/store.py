"""Versioned writes of computed views into Redis: the version fence lives here.

Every recompute takes a *ticket* before it reads the source of truth: ``max(Redis TIME in µs, fence + 1,
issued + 1)``, computed by a script on the view's own node, which records it as the highest ticket issued for
the key (``Keys.issued``, kept for ``ISSUED_TTL_MS`` after the last). Its result is written by one Lua script
on the view's hash, only if the ticket is above the hash's fence (the ticket of the newest recompute applied so
far). So a recompute that started earlier can
never overwrite one that started later, and the stored version never decreases, even across several
subscribers or a stepped clock. Tickets come from the clock of the Redis holding the key, so every subscriber
shares one clock per key; on a Redis Cluster, a failover onto a replica whose clock is behind cannot hand out a
lower ticket either (the replica has the key's issued ticket and fence: what asynchronous replication delivered
before the failover). Versions of keys on different nodes compare only to within the clocks' skew.

Why this is enough for freshness: a change is published after its commit, so the recompute it triggers
takes its ticket after the commit and reads the source after that; its ticket is above every ticket taken
before the commit, so its result (which includes the change) wins over any recompute that could not see it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from freshviews.core.clients import RedisClient, queue_script
from freshviews.core.keys import DIGEST, FENCE, TOMBSTONE, VERSION, Keys

# KEYS[1]: the view's hash, KEYS[2]: its issued ticket (one slot: the same hash tag).  ARGV: how long (ms) the
# issued ticket is kept. Returns a ticket above this node's clock, the key's fence and every ticket issued for the
# key within that time, and records it. A number goes back, and a string is stored: Lua's own formatting of a
# 16-digit number would be 1.7e+15.
_TICKET_LUA = """
local now = redis.call('TIME')
local ticket = tonumber(now[1]) * 1000000 + tonumber(now[2])
local fence = tonumber(redis.call('HGET', KEYS[1], 'f') or '0')
local issued = tonumber(redis.call('GET', KEYS[2]) or '0')
if fence >= ticket then
  ticket = fence + 1
end
if issued >= ticket then
  ticket = issued + 1
end
redis.call('SET', KEYS[2], string.format('%d', ticket), 'PX', tonumber(ARGV[1]))
return ticket
"""
# KEYS[1]: the view's hash, KEYS[2]: its issued ticket.  ARGV: ticket, digest ("-" for a tombstone), data,
# channel, view key, tombstone ttl, negative ttl. Returns 1 written, 2 written as a negative entry, 0 unchanged
# (the fence still advances), -1 fenced (a newer recompute already landed).
#
# "Not found" for a key that never held a value is a negative entry: a tombstone marked 'n' that lasts only the
# negative ttl. A real deletion (the key held a value) keeps the long tombstone, whose fence keeps an older
# recompute from resurrecting the row (invariant 4); a negative entry fences nothing that ever was.
#
# KEYS[2]: the key's issued ticket. Once the fence reaches it, the fence alone keeps every later ticket above it,
# so it is deleted: an issued ticket is kept only while a higher one than the fence is out (a recompute in flight,
# or one that failed), and a flood of keys that are each computed once leaves nothing behind but what the
# negative entries' cap bounds.
_WRITE_LUA = """
local fence = tonumber(redis.call('HGET', KEYS[1], 'f') or '0')
if tonumber(ARGV[1]) <= fence then
  return -1
end
if tonumber(ARGV[1]) >= tonumber(redis.call('GET', KEYS[2]) or '0') then
  redis.call('DEL', KEYS[2])
end
local current = redis.call('HGET', KEYS[1], 'h')
if current == ARGV[2] then
  redis.call('HSET', KEYS[1], 'f', ARGV[1])
  return 0
end
local written = 1
if ARGV[2] == '-' then
  redis.call('HDEL', KEYS[1], 'd')
  redis.call('HSET', KEYS[1], 'f', ARGV[1], 'v', ARGV[1], 'h', '-')
  if current == false then
    redis.call('HSET', KEYS[1], 'n', '1')
    redis.call('EXPIRE', KEYS[1], tonumber(ARGV[7]))
    written = 2
  else
    redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
  end
else
  redis.call('HSET', KEYS[1], 'f', ARGV[1], 'v', ARGV[1], 'h', ARGV[2], 'd', ARGV[3])
  redis.call('HDEL', KEYS[1], 'n')
  redis.call('PERSIST', KEYS[1])
end
redis.call('PUBLISH', ARGV[4], ARGV[1] .. ' ' .. ARGV[5])
return written
"""
# KEYS[1]: the misses sorted set (view key -> ms it was recorded).  ARGV: now in ms, negative ttl in ms, cap, then
# the view keys. Records the keys, drops the entries that expired on their own, and returns the oldest beyond the
# cap: the caller deletes their negative entries, so that the total stays bounded whatever readers ask for.
_RECORD_MISSES_LUA = """
local now = tonumber(ARGV[1])
for i = 4, #ARGV do
  redis.call('ZADD', KEYS[1], now, ARGV[i])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if over > 0 then
  local evicted = {}
  local popped = redis.call('ZPOPMIN', KEYS[1], over)
  for i = 1, #popped, 2 do
    evicted[#evicted + 1] = popped[i]
  end
  return evicted
end
return {}
"""
# KEYS[1]: a view's hash. Delete it only while it is still a negative entry (a value may have landed since).
_EVICT_NEGATIVE_LUA = """
if redis.call('HGET', KEYS[1], 'n') == '1' then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


#: What the write script returns for a "not found" kept as a negative entry (a WRITTEN outcome to callers).
NEGATIVE_WRITE = 2
#: How long a key's highest issued ticket is kept after its last ticket, unless a write reaches it first: far
#: longer than any recompute (and a failover), so that every ticket that could still be written counts; after
#: it, the fence alone bounds the next.
ISSUED_TTL_MS = 600_000


class WriteOutcome(IntEnum):
    FENCED = -1
    UNCHANGED = 0
    WRITTEN = 1


@dataclass(frozen=True, slots=True)
class PendingWrite:
    """One computed view ready to be written: ``data`` is None for a tombstone."""

    key: str
    ticket: int
    data: bytes | None


@dataclass(frozen=True, slots=True)
class Stored:
    """What Redis holds for one key, read with a ticket: ``digest`` None when nothing is cached, ``version`` and
    ``fence`` 0 then. A version is the ticket of the recompute that wrote it, so it tells when it was written."""

    ticket: int
    digest: bytes | None
    version: int
    fence: int


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).hexdigest().encode()


class CacheStore:
    """Tickets and fenced writes for cached views. Every method costs one Redis round trip, whatever the count
    (a write that leaves negative entries costs one more, two past the cap on them).

    ``negative_ttl`` is how long a "not found" for a key that never held a value is kept; at most
    ``negative_max`` of them are kept at once, the oldest evicted first.
    """

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        *,
        tombstone_ttl: int = 86_400,
        negative_ttl: int = 60,
        negative_max: int = 10_000,
    ) -> None:
        if negative_ttl < 1 or negative_max < 1:
            raise ValueError("negative_ttl and negative_max must be >= 1")
        self._redis = redis
        self._keys = keys
        self._tombstone_ttl = tombstone_ttl
        self._negative_ttl = negative_ttl
        self._negative_max = negative_max
        self._ticket = redis.register_script(_TICKET_LUA)
        self._write = redis.register_script(_WRITE_LUA)
        self._record_misses = redis.register_script(_RECORD_MISSES_LUA)
        self._evict_negative = redis.register_script(_EVICT_NEGATIVE_LUA)

    async def tickets(self, view_keys: Sequence[str]) -> list[int]:
        """One ticket per key, to be taken *before* reading the source for that key."""
        if not view_keys:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in view_keys:
                await queue_script(pipe, self._ticket, self._ticket_keys(key), [ISSUED_TTL_MS])
            return [int(ticket) for ticket in await pipe.execute()]

    def _ticket_keys(self, view_key: str) -> list[str]:
        return [self._keys.value(view_key), self._keys.issued(view_key)]

    async def write(self, writes: Sequence[PendingWrite]) -> list[WriteOutcome]:
        """Apply fenced writes; each publishes an update notification when the stored value changed."""
        if not writes:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for w in writes:
                args: list[Any]
                if w.data is None:
                    args = [w.ticket, TOMBSTONE, b"", self._keys.updates_channel, w.key, self._tombstone_ttl]
                else:
                    args = [w.ticket, digest(w.data), w.data, self._keys.updates_channel, w.key, 0]
                await queue_script(pipe, self._write, self._ticket_keys(w.key), [*args, self._negative_ttl])
            replies = await pipe.execute()
        negatives = [w.key for w, reply in zip(writes, replies, strict=True) if int(reply) == NEGATIVE_WRITE]
        if negatives:
            await self._bound_negatives(negatives)
        return [WriteOutcome(min(int(r), WriteOutcome.WRITTEN)) for r in replies]

    async def _bound_negatives(self, view_keys: Sequence[str]) -> None:
        # Two steps, each on one key: the sorted set and each evicted hash live in different Redis Cluster slots.
        seconds, micros = await self._redis.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        evicted = await self._record_misses(
            keys=[self._keys.misses], args=[now_ms, self._negative_ttl * 1000, self._negative_max, *view_keys]
        )
        if evicted:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in evicted:
                    await queue_script(pipe, self._evict_negative, [self._keys.value(key.decode())])
                await pipe.execute()

    async def stored(self, view_key: str) -> Stored:
        """A ticket for ``view_key`` and what Redis holds for it now, in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            await queue_script(pipe, self._ticket, self._ticket_keys(view_key), [ISSUED_TTL_MS])
            pipe.hmget(self._keys.value(view_key), [DIGEST, VERSION, FENCE])
            ticket, (found, version, fence) = await pipe.execute()
        return Stored(ticket=int(ticket), digest=found, version=int(version or 0), fence=int(fence or 0))

    async def digests(self, view_keys: Sequence[str]) -> list[bytes | None]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in view_keys:
                pipe.hget(self._keys.value(key), DIGEST)
            return list(await pipe.execute())

    async def cached_view_keys(self, count: int = 1000) -> list[str]:
        """Every view key present in Redis (SCAN, never KEYS: it would block Redis on a large cache)."""
        found: list[str] = []
        async for redis_key in self._redis.scan_iter(match=self._keys.value_pattern, count=count):
            found.append(self._keys.view_key_of(redis_key))
        return found

    async def is_empty(self) -> bool:
        async for _ in self._redis.scan_iter(match=self._keys.value_pattern, count=1000):
            return False
        return True
