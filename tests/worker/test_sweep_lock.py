"""The sweep lock is a short lease: renewed while its sweep runs, released after, taken back by its holder after a
Redis restart, and a sweep whose lease was lost stops and is counted."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from freshviews.core.embedded import EmbeddedRedis
from freshviews.core.keys import Keys
from freshviews.worker.service import Subscriber
from freshviews.worker.settings import SubscriberSettings
from tests.support.helpers import wait_until
from tests.support.metrics import sample
from tests.support.world import World, registry, seeded_world
from tests.worker.helpers import MakeSubscriber

LOST = "freshviews_sweep_locks_lost_total"
REDIS_ERRORS = "freshviews_subscriber_redis_errors_total"
#: A short lease, so that expiry and renewal happen within a test.
TTL = 0.3


async def test_renewal_extends_only_the_holders_lease(
    redis: Redis, keys: Keys, make_subscriber: MakeSubscriber
) -> None:
    holder = make_subscriber(consumer="holder", sweep_lock_ttl=TTL).sweeper.lease
    other = make_subscriber(consumer="other", sweep_lock_ttl=TTL).sweeper.lease
    assert await holder.acquire()
    await redis.pexpire(keys.sweep_lock, 50)
    assert await holder.renew()
    assert 50 < await redis.pttl(keys.sweep_lock) <= TTL * 1000
    await redis.pexpire(keys.sweep_lock, 50)
    assert not await other.renew()
    assert await redis.pttl(keys.sweep_lock) <= 50
    await wait_until(lambda: _gone(redis, keys), TTL + 1)
    assert not await holder.renew(), "an expired lease is lost, never silently re-taken by a renewal"


async def _gone(redis: Redis, keys: Keys) -> bool:
    return await redis.exists(keys.sweep_lock) == 0


async def test_release_deletes_only_the_holders_lease(
    redis: Redis, keys: Keys, make_subscriber: MakeSubscriber
) -> None:
    holder = make_subscriber(consumer="holder").sweeper.lease
    other = make_subscriber(consumer="other").sweeper.lease
    assert await holder.acquire()
    assert not await other.release()
    assert await redis.get(keys.sweep_lock) == b"holder"
    assert await holder.release()
    assert await redis.exists(keys.sweep_lock) == 0


async def test_a_holder_takes_its_own_lease_back_and_others_wait_for_it_to_expire(
    redis: Redis, keys: Keys, make_subscriber: MakeSubscriber
) -> None:
    assert await make_subscriber(consumer="holder", sweep_lock_ttl=TTL).sweeper.lease.acquire()
    await redis.pexpire(keys.sweep_lock, 60_000)  # as a long lock restored from an append-only file
    # The same consumer name in a new life (a restarted process, or after Redis restarted) takes it back at once,
    # with a fresh short lease.
    again = make_subscriber(consumer="holder", sweep_lock_ttl=TTL).sweeper.lease
    assert await again.acquire()
    assert 0 < await redis.pttl(keys.sweep_lock) <= TTL * 1000
    other = make_subscriber(consumer="other", sweep_lock_ttl=TTL).sweeper.lease
    assert not await other.acquire()
    # A holder that died renews nothing: the other subscriber gets the lease within its ttl.
    started = time.monotonic()
    await wait_until(other.acquire, TTL + 1.0, message="the lease outlived its holder")
    assert time.monotonic() - started <= TTL + 1.0
    assert await redis.get(keys.sweep_lock) == b"other"


async def test_the_lease_is_renewed_while_a_sweep_runs_and_released_after(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber
) -> None:
    sub = make_subscriber(consumer="holder", sweep_lock_ttl=TTL)
    gate = world.hold("item/1")
    sweeping = asyncio.create_task(sub.sweep("test"))
    await asyncio.wait_for(gate.reached.wait(), 5)
    # Held for several ttls: renewals keep it ours.
    for _ in range(5):
        await asyncio.sleep(TTL)  # the time that passes, which a renewal must outlast
        assert await redis.get(keys.sweep_lock) == b"holder"
    gate.release.set()
    result = await asyncio.wait_for(sweeping, 5)
    assert result is not None
    assert not result.lock_lost
    assert result.keys == len(world.view_keys())
    assert await redis.exists(keys.sweep_lock) == 0


async def test_a_sweep_that_lost_its_lease_stops_and_is_counted(
    redis: Redis, keys: Keys, make_subscriber: MakeSubscriber
) -> None:
    world = seeded_world(300)  # three chunks of recomputes
    sub = make_subscriber(consumer="holder", sweep_lock_ttl=TTL, ctx=world)
    gate = world.hold("item/1")
    lost_before = sample(LOST)
    sweeping = asyncio.create_task(sub.sweep("test"))
    await asyncio.wait_for(gate.reached.wait(), 5)
    await redis.set(keys.sweep_lock, "other", px=60_000)  # taken while, say, Redis was away
    await wait_until(sub.sweeper.lease.lost.is_set, TTL + 1.0)
    gate.release.set()
    result = await asyncio.wait_for(sweeping, 5)
    assert result is not None
    assert result.lock_lost
    assert sum(world.computes.values()) < len(world.view_keys())
    assert sample(LOST) - lost_before == 1
    assert await redis.get(keys.sweep_lock) == b"other", "a lost lease is not released: it is not ours"


class SlowWorld(World):
    """Every compute takes a while, so that a sweep can be caught in the middle."""

    async def _passed(self, key: str, value: Any) -> Any:
        await asyncio.sleep(0.01)  # the compute's own time
        return await super()._passed(key, value)


async def test_a_sweep_killed_with_redis_completes_soon_after_redis_returns_from_its_aof(
    tmp_path: Path, redis_server_executable: str
) -> None:
    interval = 5.0
    server = EmbeddedRedis(tmp_path, executable=redis_server_executable, extra_args=["--appendfsync", "always"])
    server.start()
    world = SlowWorld(items=seeded_world(300).items)
    client = Redis.from_url(server.url, socket_timeout=2)
    settings = SubscriberSettings(
        redis_url=server.url, consumer="holder", sweep_interval=interval, metrics_port=0, block_ms=100
    )
    keys = settings.keys
    sub = Subscriber(redis=client, registry=registry, ctx=world, settings=settings)
    running = asyncio.create_task(sub.run())
    probe: Redis | None = None
    try:
        # The warm-up sweep of the empty cache, caught in the middle.
        await wait_until(lambda: sum(world.computes.values()) >= 60, 30, message="the warm-up sweep never started")
        errors = sample(REDIS_ERRORS, {"loop": "sweep"})
        server.kill()
        # Down until the sweep has failed on it (its lock's release with it), as after any real crash.
        await wait_until(lambda: sample(REDIS_ERRORS, {"loop": "sweep"}) > errors, 10, message="the sweep never failed")
        await asyncio.to_thread(server.restart)
        back = time.time()
        probe = Redis.from_url(server.url)
        left = await probe.pttl(keys.sweep_lock)
        assert left <= settings.sweep_lock_ttl * 1000, f"the lock came back with {left} ms left"

        async def swept_since_restart() -> bool:
            assert probe is not None
            last = await probe.hgetall(keys.sweep)
            return bool(last) and float(last[b"at"]) > back and last[b"interrupted"] == b"False"

        await wait_until(swept_since_restart, 120, interval=0.05, message="no sweep completed after the restart")
        last = await probe.hgetall(keys.sweep)
        took = float(last[b"at"]) - back
        sweep_seconds = float(last[b"seconds"])
        assert int(last[b"keys"]) == len(world.view_keys())
        # The promise: within the interval, plus one sweep, plus 5 s.
        assert took <= interval + sweep_seconds + 5.0, (took, sweep_seconds)
        print(f"sweep completed {took:.2f}s after Redis returned (the sweep itself {sweep_seconds:.2f}s)")
    finally:
        sub.stop()
        await asyncio.wait_for(running, 20)
        await client.aclose()
        if probe is not None:
            await probe.aclose()
        server.stop()
