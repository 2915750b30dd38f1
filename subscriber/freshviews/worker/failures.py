"""Per-key backoff of recomputes that readers asked for and that keep failing.

Without it, a key whose compute raises is recomputed once per reader that misses it: every GET answers 503 "not
cached yet", asks again, and makes the backend fail again. So each failure of a refresh recompute is recorded
on the key (``Keys.failure``: attempts, when the next may run, the reason) with an exponential backoff
(``SUBSCRIBER_REFRESH_BACKOFF`` doubling up to ``SUBSCRIBER_REFRESH_BACKOFF_MAX``); the subscribers skip requests
for the key until then, and the read side, seeing the state, answers 503 with the remaining backoff as
Retry-After and the reason, without asking (freshviews/serving/failures.py). A success clears the state; a state
nobody renews expires ``backoff_max`` after its retry time, so attempts start over after a long quiet spell.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from freshviews.core.clients import RedisClient, queue_time
from freshviews.core.keys import FAILURE_ATTEMPTS, FAILURE_REASON, FAILURE_RETRY_AT, Keys

#: Longest reason kept with a failure state, characters.
MAX_REASON = 200


@dataclass(frozen=True, slots=True)
class FailureState:
    attempts: int
    retry_at_ms: int


def reason_of(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_REASON]


class FailureBook:
    """The failure states of keys, in Redis (shared by every subscriber and read by every app process)."""

    def __init__(self, redis: RedisClient, keys: Keys, *, backoff: float, backoff_max: float) -> None:
        if backoff <= 0 or backoff_max < backoff:
            raise ValueError("backoff must be > 0 and backoff_max >= backoff")
        self._redis = redis
        self._keys = keys
        self._backoff_ms = int(backoff * 1000)
        self._backoff_max_ms = int(backoff_max * 1000)

    def backoff_ms(self, attempts: int) -> int:
        """The wait after the ``attempts``-th failure in a row: 1, 2, 4, ... times the first, up to the max."""
        return min(self._backoff_ms << min(max(attempts - 1, 0), 30), self._backoff_max_ms)

    async def states(self, view_keys: Sequence[str]) -> tuple[int, dict[str, FailureState]]:
        """Redis's clock now (ms) and the failure state of each key that has one; one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            queue_time(pipe, self._keys.failure(view_keys[0]) if view_keys else self._keys.misses)
            for key in view_keys:
                pipe.hmget(self._keys.failure(key), [FAILURE_ATTEMPTS, FAILURE_RETRY_AT])
            replies = await pipe.execute()
        seconds, micros = replies[0]
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        states: dict[str, FailureState] = {}
        for key, (attempts, retry_at) in zip(view_keys, replies[1:], strict=True):
            if attempts is not None and retry_at is not None:
                states[key] = FailureState(int(attempts), int(retry_at))
        return now_ms, states

    async def settle(
        self, failures: Mapping[str, BaseException], succeeded: Sequence[str], known: Mapping[str, FailureState]
    ) -> None:
        """Record ``failures`` (one more attempt each, with its backoff from now) and clear the states of the keys
        in ``known`` that ``succeeded``; one round trip for the clock, one for the writes."""
        cleared = [key for key in succeeded if key in known]
        if not failures and not cleared:
            return
        seconds, micros = await self._redis.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, exc in failures.items():
                previous = known.get(key)
                attempts = (previous.attempts if previous is not None else 0) + 1
                wait_ms = self.backoff_ms(attempts)
                state = self._keys.failure(key)
                pipe.hset(
                    state,
                    mapping={
                        FAILURE_ATTEMPTS: attempts,
                        FAILURE_RETRY_AT: now_ms + wait_ms,
                        FAILURE_REASON: reason_of(exc),
                    },
                )
                pipe.pexpire(state, wait_ms + self._backoff_max_ms)
            for key in cleared:
                pipe.delete(self._keys.failure(key))
            await pipe.execute()
