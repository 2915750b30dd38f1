"""What the read side knows of keys whose recompute keeps failing: the subscribers' failure states, and a copy of
each in this process until its backoff ends.

A subscriber that fails to recompute a key readers asked for records the failure on the key with a backoff
(freshviews/worker/failures.py). A reader that misses such a key is answered 503 with the remaining backoff as
Retry-After and the reason, without waiting: the state is read with the refresh request of each flight of misses
(one round trip, as before), and kept here until the backoff ends so that the readers after it ask nothing and
make no Redis call at all. (The first flight of another process sends its request anyway; the subscribers drop
it unrecomputed while the backoff lasts.)
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from freshviews.core.clients import AnyPipeline, RedisClient, queue_time
from freshviews.core.keys import FAILURE_ATTEMPTS, FAILURE_REASON, FAILURE_RETRY_AT, Keys


@dataclass(frozen=True, slots=True)
class Failure:
    """A key whose recompute failed ``attempts`` times in a row; the next may run in ``remaining`` seconds."""

    key: str
    attempts: int
    remaining: float
    reason: str

    @property
    def retry_after(self) -> int:
        """Whole seconds, never 0: a client told to retry at once would only meet the same backoff."""
        return max(1, math.ceil(self.remaining))


def queue_failure_reads(pipe: AnyPipeline, keys: Keys, view_keys: Sequence[str]) -> int:
    """Add the reads of ``view_keys``' failure states (and Redis's clock: on a cluster, the first key's node's)
    to ``pipe``; the number of replies :func:`failures_of` takes from the pipeline's results."""
    queue_time(pipe, keys.failure(view_keys[0]) if view_keys else keys.misses)
    for key in view_keys:
        pipe.hmget(keys.failure(key), [FAILURE_ATTEMPTS, FAILURE_RETRY_AT, FAILURE_REASON])
    return 1 + len(view_keys)


def failures_of(view_keys: Sequence[str], replies: Sequence[Any]) -> dict[str, Failure]:
    """The keys among ``view_keys`` whose recompute failed last, with their state (``remaining`` is 0 once the
    backoff ended), from the replies of :func:`queue_failure_reads`."""
    seconds, micros = replies[0]
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    found: dict[str, Failure] = {}
    for key, (attempts, retry_at, reason) in zip(view_keys, replies[1:], strict=True):
        if attempts is None or retry_at is None:
            continue
        text = reason.decode(errors="replace") if reason is not None else "unknown"
        found[key] = Failure(key, int(attempts), max(0.0, (int(retry_at) - now_ms) / 1000), text)
    return found


async def read_failures(redis: RedisClient, keys: Keys, view_keys: Sequence[str]) -> dict[str, Failure]:
    """:func:`failures_of` ``view_keys``, in one round trip whatever the count."""
    if not view_keys:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        queue_failure_reads(pipe, keys, view_keys)
        replies = await pipe.execute()
    return failures_of(view_keys, replies)


class FailureMemo:
    """Failures seen by this process, each kept until its backoff ends; at most ``capacity`` (oldest dropped)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._capacity = capacity
        #: key -> (the loop's clock when the backoff ends, the failure as read)
        self._until: dict[str, tuple[float, Failure]] = {}

    def __len__(self) -> int:
        return len(self._until)

    def remember(self, failures: dict[str, Failure], *, cleared: Sequence[str] = ()) -> None:
        """Keep ``failures`` as read now, and forget the ``cleared`` keys (read with no failure state)."""
        for key in cleared:
            self._until.pop(key, None)
        now = asyncio.get_running_loop().time()
        for key, failure in failures.items():
            self._until.pop(key, None)
            self._until[key] = (now + failure.remaining, failure)
        while len(self._until) > self._capacity:
            del self._until[next(iter(self._until))]

    def get(self, key: str, *, ended: bool = False) -> Failure | None:
        """The key's failure with its backoff remaining now; None when there is none, or when it ended unless
        ``ended`` (what a read that just asked again and found no value reports: the last failure known)."""
        held = self._until.get(key)
        if held is None:
            return None
        until, failure = held
        remaining = until - asyncio.get_running_loop().time()
        if remaining <= 0 and not ended:
            return None
        return Failure(key, failure.attempts, max(0.0, remaining), failure.reason)
