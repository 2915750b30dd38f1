"""Per-view minimum intervals: a heavy view under sustained writes is recomputed at most once per interval.

``SUBSCRIBER_MIN_INTERVALS`` names views and seconds (``{"stats": 1}``). A change-driven recompute of a key of such
a view that was computed less than its interval ago in this process is not run now: the key is recorded as due at
``last compute + interval`` in the due set (a sorted set, before the change is acknowledged, so a crash loses
nothing), and the due loop recomputes it then. Every change to the key in between rides on that one recompute, so a
change waits at most the interval plus one compute; cheap views in the same batch are recomputed at once.

The due loop claims due keys atomically: they move from the due set to the claimed set, scored by a lease that
another subscriber takes over only if this one dies. It recomputes them and then drops them from the claimed set.
A change put off while a key is being recomputed adds the key to the due set again: it is recomputed again then.
The interval holds per process: with N subscribers a key is recomputed at most N times per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

from redis.asyncio import Redis

from freshviews.core.keys import Keys
from freshviews.core.settings import ConfigError
from freshviews.core.views import InvalidKeyError, Registry, UnknownViewError, ViewKey
from freshviews.worker import metrics
from freshviews.worker.recompute import Recomputer

logger = logging.getLogger(__name__)

Ctx = TypeVar("Ctx")

#: How long a claimed key is this process's before another subscriber may take it over, seconds.
LEASE = 30.0
#: A due key whose recompute failed is tried again this much later, seconds.
RETRY = 1.0
#: The due loop looks at the set at least this often (keys another subscriber deferred, leases that expired).
POLL = 1.0
#: Keys claimed per round.
CLAIM_BATCH = 500
#: Last-compute times kept in memory before the expired ones are dropped.
REMEMBERED = 10_000

# KEYS: the due set, the claimed set. Claims whose lease ended by ARGV[1] (ms) are due again; then the keys due by
# ARGV[2] (ms, or +inf), at most ARGV[4], move to the claimed set with the lease ARGV[3].
_CLAIM = """
local limit = tonumber(ARGV[4])
local expired = redis.call('ZRANGE', KEYS[2], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, limit, 'WITHSCORES')
for i = 1, #expired, 2 do
    redis.call('ZREM', KEYS[2], expired[i])
    redis.call('ZADD', KEYS[1], 'LT', expired[i + 1], expired[i])  -- due since its lease ended
end
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[2], 'BYSCORE', 'LIMIT', 0, limit)
for _, key in ipairs(due) do
    redis.call('ZREM', KEYS[1], key)
    redis.call('ZADD', KEYS[2], ARGV[3], key)
end
return due
"""

# KEYS: the due set, the claimed set. ARGV[2..] pairs: a claimed key, and "d" (done) or "r" (failed: due again at
# ARGV[1], ms, unless a change put it off to an earlier time meanwhile).
_FINISH = """
for i = 2, #ARGV, 2 do
    redis.call('ZREM', KEYS[2], ARGV[i])
    if ARGV[i + 1] == 'r' then
        redis.call('ZADD', KEYS[1], 'LT', ARGV[1], ARGV[i])
    end
end
return 0
"""


class Throttle(Generic[Ctx]):
    """The minimum intervals of ``registry``'s views (``intervals``: view name -> seconds) and their due keys."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        registry: Registry[Ctx],
        intervals: Mapping[str, float],
        recomputer: Recomputer[Ctx],
    ) -> None:
        names = {view.name for view in registry.views}
        unknown = sorted(set(intervals) - names)
        if unknown:
            raise ConfigError(
                f"SUBSCRIBER_MIN_INTERVALS names no view {', '.join(map(repr, unknown))} (views: {sorted(names)})"
            )
        self._redis = redis
        self._due = keys.due
        self._claimed = keys.due_claimed
        self._registry = registry
        self._recomputer = recomputer
        self._intervals = {name: seconds for name, seconds in intervals.items() if seconds > 0}
        self._last: dict[str, float] = {}
        self._woken = asyncio.Event()
        self._claim: Any = redis.register_script(_CLAIM)
        self._finish: Any = redis.register_script(_FINISH)

    @property
    def active(self) -> bool:
        """Whether any view has an interval (otherwise nothing is ever deferred, and no loop is needed)."""
        return bool(self._intervals)

    # -- the consumer's side ------------------------------------------------------------------------------

    def split(self, keys: Mapping[str, ViewKey]) -> tuple[dict[str, ViewKey], dict[str, float]]:
        """The keys to recompute now, and the rest with when each is due (unix time)."""
        if not self._intervals:
            return dict(keys), {}
        now = time.time()
        ready: dict[str, ViewKey] = {}
        later: dict[str, float] = {}
        for name, view_key in keys.items():
            last = self._last.get(name)
            interval = self._intervals.get(view_key.view.name, 0.0)
            if last is not None and now < last + interval:
                later[name] = last + interval
            else:
                ready[name] = view_key
        return ready, later

    def computed(self, keys: Mapping[str, ViewKey], at: float) -> None:
        """Note that ``keys`` were recomputed from a read of the source starting at ``at`` (unix time)."""
        if not self._intervals:
            return
        for name, view_key in keys.items():
            if view_key.view.name in self._intervals:
                self._last[name] = at
        if len(self._last) > REMEMBERED:
            longest = max(self._intervals.values())
            self._last = {k: t for k, t in self._last.items() if t + longest > at}

    async def defer(self, due: Mapping[str, float]) -> None:
        """Record ``due`` (key -> unix time) in the due set, keeping an earlier time a key already has."""
        if not due:
            return
        await self._redis.zadd(self._due, {name: int(at * 1000) for name, at in due.items()}, lt=True)
        for name in due:
            with contextlib.suppress(UnknownViewError, InvalidKeyError):
                metrics.RECOMPUTES_DEFERRED.labels(self._registry.parse(name).view.name).inc()
        self._woken.set()

    async def is_due(self, key: str) -> bool:
        """Whether ``key`` is due or being recomputed (its changes are applied; its recompute is scheduled)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zscore(self._due, key)
            pipe.zscore(self._claimed, key)
            scores = await pipe.execute()
        return any(score is not None for score in scores)

    # -- the due loop ------------------------------------------------------------------------------------

    async def step(self) -> int:
        """Wait until a key is due (or :data:`POLL`), then recompute what is due; the number recomputed."""
        earliest = await self._redis.zrange(self._due, 0, 0, withscores=True)
        wait = POLL
        if earliest:
            wait = min(POLL, max(0.0, float(earliest[0][1]) / 1000 - time.time()))
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._woken.wait()
        self._woken.clear()
        return await self.run_due(time.time())

    async def run_due(self, now: float) -> int:
        """Recompute the keys due by ``now`` (unix time; ``inf``: every key in the set); the number recomputed."""
        total = 0
        until: str | int = "+inf" if now == float("inf") else int(now * 1000)
        while True:
            started = time.time()
            args = [int(started * 1000), until, int((started + LEASE) * 1000), CLAIM_BATCH]
            claimed = [k.decode() for k in await self._claim(keys=[self._due, self._claimed], args=args)]
            if not claimed:
                return total
            total += await self._recompute(claimed)
            if len(claimed) < CLAIM_BATCH:
                return total

    async def _recompute(self, claimed: Sequence[str]) -> int:
        keys: dict[str, ViewKey] = {}
        gone: list[str] = []
        for name in claimed:
            try:
                keys[name] = self._registry.parse(name)
            except (UnknownViewError, InvalidKeyError):
                gone.append(name)  # its view is no longer served: nothing to recompute
        started = time.time()
        self.computed(keys, started)
        result = await self._recomputer.run(keys, trigger="due")
        for name, exc in result.failures.items():
            logger.warning("due recompute of %s failed (%s: %s); again in %.0fs", name, type(exc).__name__, exc, RETRY)
        args: list[str | int] = [int((time.time() + RETRY) * 1000)]
        for name in [*result.outcomes, *gone]:
            args += [name, "d"]
        for name in result.failures:
            args += [name, "r"]
        await self._finish(keys=[self._due, self._claimed], args=args)
        return len(result.outcomes)
