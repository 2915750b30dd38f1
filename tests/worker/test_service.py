"""The supervised service loop: changes applied while running, timer sweeps, heartbeat, shutdown, Redis restarts."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from freshviews.core.connections import create_redis
from freshviews.core.embedded import EmbeddedRedis
from freshviews.core.keys import DATA, Keys
from freshviews.publish.publisher import Publisher
from tests.support.helpers import wait_until
from tests.support.world import World, item_change
from tests.worker.helpers import MakeSubscriber, cached, stop


async def _name(redis: Redis, keys: Keys, item_id: int) -> str | None:
    data = (await cached(redis, keys, f"item/{item_id}")).get(DATA)
    return None if data is None else str(json.loads(data)["name"])


async def _all_cached(redis: Redis, keys: Keys, world: World) -> bool:
    for key in world.view_keys():
        if await redis.hget(keys.value(key), DATA) is None:
            return False
    return True


async def _reconnect(redis: Redis) -> None:
    async def answers() -> bool:
        try:
            return bool(await redis.ping())
        except RedisConnectionError:
            return False

    await wait_until(answers, timeout=5, message="Redis did not come back")


async def test_run_applies_changes_sweeps_on_a_timer_beats_and_stops(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    sub = make_subscriber(sweep_interval=0.3, heartbeat_ttl=2, shutdown_timeout=2, reclaim_interval=0.1)
    task = asyncio.create_task(sub.run())
    try:
        await wait_until(lambda: _all_cached(redis, keys, world), timeout=5, message="not warmed")

        world.items[1]["name"] = "published"
        await publisher.publish(item_change(1, color="green"))
        await wait_until(lambda: _has_name(redis, keys, 1, "published"), timeout=5, message="change not applied")

        world.items[2]["name"] = "never published"  # only the timer sweep can find this one
        await wait_until(lambda: _has_name(redis, keys, 2, "never published"), timeout=5, message="no timer sweep")
        # The sweep records its outcome just after its writes.
        await wait_until(lambda: _last_sweep_was(redis, keys, b"timer"), timeout=5, message="no timer sweep recorded")

        heartbeat = await redis.get(keys.heartbeat("c1"))
        assert heartbeat is not None
        assert json.loads(heartbeat)["consumer"] == "c1"
        assert 0 < await redis.ttl(keys.heartbeat("c1")) <= 2
        assert not task.done()
    finally:
        elapsed = await stop(sub, task, budget=2)
    assert elapsed < 2
    assert task.result() is None
    assert await redis.exists(keys.heartbeat("c1")) == 0


async def _last_sweep_was(redis: Redis, keys: Keys, reason: bytes) -> bool:
    return bool(await redis.hget(keys.sweep, "reason") == reason)


async def _has_name(redis: Redis, keys: Keys, item_id: int, name: str) -> bool:
    return await _name(redis, keys, item_id) == name


async def test_stop_is_prompt_with_the_sweep_timer_off(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, caplog: pytest.LogCaptureFixture
) -> None:
    # With sweep_interval=0 (or any interval longer than the shutdown timeout) nothing is in flight at stop():
    # stop() must not wait out the whole shutdown timeout and then claim it handed back a batch.
    sub = make_subscriber(sweep_interval=0, shutdown_timeout=3, reclaim_interval=0.1)
    task = asyncio.create_task(sub.run())
    await wait_until(lambda: redis.exists(keys.heartbeat("c1")), timeout=5, message="no heartbeat")
    with caplog.at_level(logging.WARNING, logger="freshviews.worker.service"):
        elapsed = await stop(sub, task, budget=3)
    assert "handing back" not in caplog.text
    assert elapsed < 1.5, f"stop() took {elapsed:.1f}s with nothing in flight"


async def test_run_survives_redis_restarting_empty(
    redis_server: EmbeddedRedis,
    redis_url: str,
    redis: Redis,
    keys: Keys,
    world: World,
    make_subscriber: MakeSubscriber,
    publisher: Publisher,
) -> None:
    client = create_redis(redis_url, timeout=1.0)
    # A long timer: only the recovery path (NOGROUP -> recreate the group -> sweep) can warm the cache again.
    sub = make_subscriber(client=client, sweep_interval=30, reclaim_interval=0.1, heartbeat_ttl=2, shutdown_timeout=2)
    task = asyncio.create_task(sub.run())
    try:
        await wait_until(lambda: _all_cached(redis, keys, world), timeout=5, message="not warmed")
        await asyncio.to_thread(redis_server.restart, wipe=True)
        await _reconnect(redis)  # the test's own client held a connection to the old server

        await wait_until(lambda: _all_cached(redis, keys, world), timeout=15, message="not warmed after the restart")
        assert not task.done()
        groups = await redis.xinfo_groups(keys.changes)
        assert [g["name"] for g in groups] == [b"subscribers"]
        await wait_until(lambda: _last_sweep_was(redis, keys, b"recover"), timeout=5, message="no recovery sweep")

        # And it consumes again, from the recreated group.
        world.items[3]["name"] = "after restart"
        await publisher.publish(item_change(3, color="red"))
        await wait_until(lambda: _has_name(redis, keys, 3, "after restart"), timeout=10, message="not consuming")
        await wait_until(lambda: redis.exists(keys.heartbeat("c1")), timeout=5, message="no heartbeat")
    finally:
        await stop(sub, task, budget=2)
        await client.aclose()
    assert task.result() is None
