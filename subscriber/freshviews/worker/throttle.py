"""Per-view minimum intervals: a heavy view under sustained writes is recomputed at most once per interval.

``SUBSCRIBER_MIN_INTERVALS`` names views and seconds (``{"stats": 1}``). A change-driven recompute of a key of such
a view that this process computed less than its interval ago (or already put off) is not run now: the key is
recorded as due at the end of the interval in the due set (before the change is acknowledged, so a crash loses
nothing), and the due loop recomputes it then. Every change to the key in between rides on that one recompute, so a
change waits at most the interval plus one compute; cheap views in the same batch are recomputed at once.

The due loop claims due keys atomically: they move from the due set to the claimed set, scored by a lease, which
another subscriber takes over only once it has run out (the claimer died). A key claimed elsewhere stays due until
that claim ends. After the recompute a claim drops its keys from the claimed set only if they still hold its own
lease; a change put off meanwhile has added the key to the due set again, so it is recomputed again then. A due
recompute that fails is due again after a backoff (at least the view's interval, doubled per attempt) and after
``SUBSCRIBER_MAX_ATTEMPTS`` is dead-lettered with its reason, like a change whose keys keep failing.

Every time in the two sets is Redis's clock (``TIME`` in the scripts): subscribers on hosts whose clocks disagree
agree on what is due. The interval holds per process: with N subscribers a key is recomputed at most N times per
interval. The due loop runs in every subscriber, whether or not it names intervals, so that keys left due by
another one (a rolling change of the setting) are still recomputed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

from freshviews.core.clients import RedisClient
from freshviews.core.keys import Keys
from freshviews.core.settings import ConfigError
from freshviews.core.views import InvalidKeyError, Registry, UnknownViewError, ViewKey
from freshviews.worker import metrics
from freshviews.worker.recompute import Recomputer

logger = logging.getLogger(__name__)

Ctx = TypeVar("Ctx")

#: How long a claim is its subscriber's before another one may take it over, seconds.
LEASE = 30.0
#: The first wait before a failing due recompute is tried again, seconds (at least the view's interval).
RETRY = 1.0
#: The due loop looks at the sets at least this often (keys another subscriber put off, leases that ran out).
POLL = 1.0
#: How soon the due loop looks again when every due key is claimed by another subscriber, seconds.
BUSY = 0.1
#: Last-compute times kept in memory before the expired ones are dropped.
REMEMBERED = 10_000

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: the due set. ARGV: pairs of a key and its delay (ms): due then, unless it is due earlier already.
_DEFER = (
    _NOW
    + """
for i = 1, #ARGV, 2 do
    redis.call('ZADD', KEYS[1], 'LT', now + tonumber(ARGV[i + 1]), ARGV[i])
end
return now
"""
)

# KEYS: the due set, the claimed set. ARGV: the lease (ms), the most keys to claim, "1" to claim every key in the
# due set whenever it is due (burst mode). Claims that ran out are due again first. Returns the lease score, the
# keys claimed, how many due keys are claimed elsewhere, and in how many ms the next key is due (-1: none).
_CLAIM = (
    _NOW
    + """
local limit = tonumber(ARGV[2])
local expired = redis.call('ZRANGE', KEYS[2], '-inf', now, 'BYSCORE', 'LIMIT', 0, limit, 'WITHSCORES')
for i = 1, #expired, 2 do
    redis.call('ZREM', KEYS[2], expired[i])
    redis.call('ZADD', KEYS[1], 'LT', expired[i + 1], expired[i])
end
local upto = now
if ARGV[3] == '1' then upto = '+inf' end
local due = redis.call('ZRANGE', KEYS[1], '-inf', upto, 'BYSCORE', 'LIMIT', 0, limit)
local lease = now + tonumber(ARGV[1])
local claimed = {}
local busy = 0
for _, key in ipairs(due) do
    if redis.call('ZSCORE', KEYS[2], key) then
        busy = busy + 1
    else
        redis.call('ZREM', KEYS[1], key)
        redis.call('ZADD', KEYS[2], lease, key)
        claimed[#claimed + 1] = key
    end
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local soon = -1
if #first > 0 then soon = math.max(0, tonumber(first[2]) - now) end
return {lease, claimed, busy, soon}
"""
)

# KEYS: the due set, the claimed set. ARGV: the claim's lease, then pairs of a key and "-1" (done) or a delay in
# ms (due again then). A key no longer at this lease belongs to another claim now and is left alone.
_FINISH = (
    _NOW
    + """
local lease = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
    local score = redis.call('ZSCORE', KEYS[2], ARGV[i])
    if score and tonumber(score) == lease then
        redis.call('ZREM', KEYS[2], ARGV[i])
        local delay = tonumber(ARGV[i + 1])
        if delay >= 0 then
            redis.call('ZADD', KEYS[1], 'LT', now + delay, ARGV[i])
        end
    end
end
return 0
"""
)


class Throttle(Generic[Ctx]):
    """The minimum intervals of ``registry``'s views (``intervals``: view name -> seconds) and their due keys.

    ``claim_batch`` keys are claimed at a time (about the recompute concurrency, so that no claim outlives its
    lease queued behind the others); after ``max_attempts`` failed due recomputes a key is dead-lettered.
    """

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        registry: Registry[Ctx],
        intervals: Mapping[str, float],
        recomputer: Recomputer[Ctx],
        *,
        claim_batch: int,
        max_attempts: int,
        dead_letter_maxlen: int,
        consumer: str,
    ) -> None:
        names = {view.name for view in registry.views}
        unknown = sorted(set(intervals) - names)
        if unknown:
            raise ConfigError(
                f"SUBSCRIBER_MIN_INTERVALS names no view {', '.join(map(repr, unknown))} (views: {sorted(names)})"
            )
        self._redis = redis
        self._keys = keys
        self._registry = registry
        self._recomputer = recomputer
        self._claim_batch = max(1, claim_batch)
        self._max_attempts = max_attempts
        self._dead_letter_maxlen = dead_letter_maxlen
        self._consumer = consumer
        self._intervals = {name: seconds for name, seconds in intervals.items() if seconds > 0}
        #: key -> when this process last read the source for it (monotonic).
        self._last: dict[str, float] = {}
        self._prune_at = REMEMBERED
        #: key -> when it is due (monotonic), for the keys this process put off and no due recompute took yet.
        self._deferred: dict[str, float] = {}
        #: key -> failed due recomputes in a row, in this process.
        self._attempts: dict[str, int] = {}
        self._woken = asyncio.Event()
        self._defer_script: Any = redis.register_script(_DEFER)
        self._claim_script: Any = redis.register_script(_CLAIM)
        self._finish_script: Any = redis.register_script(_FINISH)

    def interval(self, view_key: ViewKey) -> float:
        return self._intervals.get(view_key.view.name, 0.0)

    # -- the consumer's side ------------------------------------------------------------------------------

    def split(self, keys: Mapping[str, ViewKey]) -> tuple[dict[str, ViewKey], dict[str, float]]:
        """The keys to recompute now, and the rest with the seconds until each is due."""
        if not self._intervals:
            return dict(keys), {}
        now = time.monotonic()
        ready: dict[str, ViewKey] = {}
        later: dict[str, float] = {}
        for name, view_key in keys.items():
            due = self._deferred.get(name)
            if due is None:
                last = self._last.get(name)
                if last is not None and now < last + self.interval(view_key):
                    due = last + self.interval(view_key)
            if due is None:
                ready[name] = view_key
            else:
                # Put off, or already waiting in the due set: the due loop's recompute covers this change too.
                later[name] = max(0.0, due - now)
        return ready, later

    def computed(self, keys: Mapping[str, ViewKey], at: float) -> None:
        """Note that ``keys`` were recomputed from a read of the source starting at ``at`` (monotonic)."""
        for name, view_key in keys.items():
            self._deferred.pop(name, None)
            if self.interval(view_key) > 0:
                self._last[name] = at
        if len(self._last) > self._prune_at:
            longest = max(self._intervals.values(), default=0.0)
            self._last = {k: t for k, t in self._last.items() if t + longest > at}
            self._prune_at = max(REMEMBERED, 2 * len(self._last))

    async def defer(self, due: Mapping[str, float]) -> None:
        """Record ``due`` (key -> seconds from now) in the due set, keeping an earlier time a key already has."""
        if not due:
            return
        args: list[str | int] = []
        for name, seconds in due.items():
            args += [name, int(seconds * 1000)]
        await self._defer_script(keys=[self._keys.due], args=args)
        now = time.monotonic()
        for name, seconds in due.items():
            self._deferred.setdefault(name, now + seconds)
            with contextlib.suppress(UnknownViewError, InvalidKeyError):
                metrics.RECOMPUTES_DEFERRED.labels(self._registry.parse(name).view.name).inc()
        self._woken.set()

    async def is_due(self, key: str) -> bool:
        """Whether ``key`` is due or being recomputed (its changes are applied; its recompute is scheduled)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zscore(self._keys.due, key)
            pipe.zscore(self._keys.due_claimed, key)
            scores = await pipe.execute()
        return any(score is not None for score in scores)

    # -- the due loop ------------------------------------------------------------------------------------

    async def step(self) -> int:
        """Recompute what is due now, then wait until the next key is due (at most :data:`POLL`, or until this
        process puts a key off); the number recomputed."""
        done, busy, next_ms = await self._round(everything=False)
        if done:
            return done
        wait = POLL if next_ms < 0 else min(POLL, next_ms / 1000)
        if busy:
            wait = min(wait, BUSY)
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._woken.wait()
        self._woken.clear()
        return 0

    async def run_due(self, *, everything: bool = False) -> int:
        """Recompute the keys due now (with ``everything``, every key in the due set: burst mode leaves nothing
        due); the number recomputed."""
        total = 0
        while True:
            done, _, _ = await self._round(everything=everything)
            total += done
            if not done:
                return total

    async def _round(self, *, everything: bool) -> tuple[int, int, int]:
        reply = await self._claim_script(
            keys=[self._keys.due, self._keys.due_claimed],
            args=[int(LEASE * 1000), self._claim_batch, "1" if everything else "0"],
        )
        lease, claimed, busy, next_ms = int(reply[0]), [k.decode() for k in reply[1]], int(reply[2]), int(reply[3])
        if not claimed:
            return 0, busy, next_ms
        return await self._recompute(claimed, lease), busy, next_ms

    async def _recompute(self, claimed: Sequence[str], lease: int) -> int:
        keys: dict[str, ViewKey] = {}
        gone: list[str] = []
        for name in claimed:
            try:
                keys[name] = self._registry.parse(name)
            except (UnknownViewError, InvalidKeyError):
                gone.append(name)  # its view is no longer served: nothing to recompute
        self.computed(keys, time.monotonic())  # before the read: a change from now on is put off to after it
        result = await self._recomputer.run(keys, trigger="due")
        args: list[str | int] = [lease]
        for name in [*result.outcomes, *gone]:
            self._attempts.pop(name, None)
            args += [name, -1]
        for name, exc in result.failures.items():
            attempts = self._attempts.get(name, 0) + 1
            if attempts >= self._max_attempts:
                await self._dead_letter(name, exc, attempts)
                self._attempts.pop(name, None)
                args += [name, -1]
                continue
            self._attempts[name] = attempts
            wait = max(RETRY, self.interval(keys[name])) * 2 ** (attempts - 1)
            logger.warning("due recompute of %s failed (%s: %s); again in %.1fs", name, type(exc).__name__, exc, wait)
            args += [name, int(wait * 1000)]
        await self._finish_script(keys=[self._keys.due, self._keys.due_claimed], args=args)
        return len(result.outcomes)

    async def _dead_letter(self, key: str, exc: BaseException, attempts: int) -> None:
        reason = f"due recompute of {key!r} failed {attempts} times: {type(exc).__name__}: {exc}"
        await self._redis.xadd(
            self._keys.dead_letters,
            {"key": key, "reason": reason[:1000], "kind": "due", "attempts": attempts, "consumer": self._consumer},
            maxlen=self._dead_letter_maxlen,
            approximate=True,
        )
        metrics.DEAD_LETTERS.labels("due").inc()
        logger.error("dead-lettered the due recompute of %s: %s", key, reason[:300])
