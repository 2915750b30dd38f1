"""What a read gets back from Redis: a :class:`Snapshot` of one cached view, and the reads that fetch them.

Every read of a value in this process ends in :func:`read_snapshots` (one pipeline of HMGETs whatever the
number of keys); the cheap ``If-None-Match`` check reads only the version with :func:`read_version`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from freshviews.core.clients import RedisClient
from freshviews.core.keys import DATA, DIGEST, FENCE, TOMBSTONE, VERSION, Keys


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One cached view as stored: ``data`` is the stored JSON bytes, None for a deleted view (tombstone).

    ``fence`` is the ticket of the newest recompute applied to the key (at least ``version``: a recompute that
    found the value unchanged moves the fence, not the version).
    """

    key: str
    version: int
    data: bytes | None
    fence: int

    @property
    def deleted(self) -> bool:
        return self.data is None


def _snapshot(key: str, reply: Sequence[bytes | None]) -> Snapshot | None:
    data, version, digest, fence = reply
    if version is None:
        return None
    version_int = int(version)
    fence_int = max(int(fence or 0), version_int)
    if digest == TOMBSTONE:
        return Snapshot(key, version_int, None, fence_int)
    if data is None:
        return None
    return Snapshot(key, version_int, data, fence_int)


async def read_snapshots(redis: RedisClient, keys: Keys, view_keys: Sequence[str]) -> list[Snapshot | None]:
    """The current snapshot of each key (None: not cached), in one round trip whatever the count."""
    if not view_keys:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for key in view_keys:
            pipe.hmget(keys.value(key), [DATA, VERSION, DIGEST, FENCE])
        replies = await pipe.execute()
    return [_snapshot(key, reply) for key, reply in zip(view_keys, replies, strict=True)]


async def read_version(redis: RedisClient, keys: Keys, view_key: str) -> int | None:
    """The stored version of one key (None: not cached): a few bytes, however large the value."""
    version = await redis.hget(keys.value(view_key), VERSION)
    return None if version is None else int(version)


#: A read of the current snapshot of each key (None: not cached), such as :meth:`Serving.read`.
Read = Callable[[Sequence[str]], Awaitable[list[Snapshot | None]]]
