"""The sweep lock as a short lease: taken with the holder's token, renewed while the sweep runs, released after.

A long lock outlives its holder: Redis restarted from its append-only file brings the key back with whatever it
had left, and every subscriber, the holder included, then skips sweeps until it expires. So the lease is short
(``SUBSCRIBER_SWEEP_LOCK_TTL``, 5 s), a supervised task renews it while the sweep runs, and its token is the
holder's consumer name: a holder that finds its own token after a restart takes the lease straight back. Every
step compares the token in one script, so nobody ever extends or deletes a lease another subscriber holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from redis.exceptions import RedisClusterException, RedisError

from freshviews.core.clients import RedisClient
from freshviews.worker import metrics

logger = logging.getLogger(__name__)

# Take the lease when free, or take it back when it already carries our token (ours before a restart).
_ACQUIRE_LUA = """
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
# Extend the lease only while it is still ours: a lease that expired (or was taken) is not silently re-taken
# mid-sweep, the sweep learns it lost it.
_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lease:
    """A lease on ``key`` for ``token``, ``ttl`` seconds long, renewed every third of it while :meth:`held`."""

    def __init__(self, redis: RedisClient, key: str, token: str, *, ttl: float) -> None:
        if ttl <= 0:
            raise ValueError("a lease needs a positive ttl")
        self._key = key
        self._token = token
        self._ttl_ms = max(1, int(ttl * 1000))
        self._acquire = redis.register_script(_ACQUIRE_LUA)
        self._renew = redis.register_script(_RENEW_LUA)
        self._release = redis.register_script(_RELEASE_LUA)
        #: Set once a renewal found the lease gone or held by another: the work it guards should stop.
        self.lost = asyncio.Event()

    @property
    def ttl(self) -> float:
        return self._ttl_ms / 1000

    async def acquire(self) -> bool:
        """Take the lease (or take back our own); False when another holder has it."""
        self.lost.clear()
        return bool(await self._acquire(keys=[self._key], args=[self._token, self._ttl_ms]))

    async def renew(self) -> bool:
        """Extend the lease by its ttl; False when it is no longer ours."""
        return bool(await self._renew(keys=[self._key], args=[self._token, self._ttl_ms]))

    async def release(self) -> bool:
        """Delete the lease if it is still ours."""
        return bool(await self._release(keys=[self._key], args=[self._token]))

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[asyncio.Event]:
        """Keep an acquired lease renewed for the body; yields :attr:`lost`. Released on the way out."""
        renewer = asyncio.create_task(self._keep(), name="sweep-lease")
        try:
            yield self.lost
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            # A renewer that died of anything but cancellation is a bug worth the traceback, not a silent stop.
            if not renewer.cancelled() and (failure := renewer.exception()) is not None:
                raise failure
            if not self.lost.is_set():
                with contextlib.suppress(RedisError, OSError):  # Redis away: the lease expires on its own
                    await self.release()

    async def _keep(self) -> None:
        loop = asyncio.get_running_loop()
        period = self.ttl / 3
        # By our own clock: past this without a renewal, someone else may hold the lease now.
        expires = loop.time() + self.ttl
        while True:
            await asyncio.sleep(period)
            try:
                renewed = await self.renew()
            except (RedisError, RedisClusterException, OSError) as exc:
                if loop.time() < expires:
                    logger.info("sweep lease: renewal failed (%s); trying again", exc)
                    continue
                renewed = False
            if not renewed:
                metrics.SWEEP_LOCKS_LOST.inc()
                logger.warning("sweep lease on %s lost mid-sweep: stopping this sweep", self._key)
                self.lost.set()
                return
            expires = loop.time() + self.ttl
