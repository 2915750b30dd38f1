"""The update hub on its own: conflating mailboxes, and the resync that makes up for lost notifications."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from freshviews.core.connections import create_redis
from freshviews.core.embedded import EmbeddedRedis
from freshviews.core.keys import Keys
from freshviews.serving.hub import PING_EVERY, Mailbox, UpdateHub
from freshviews.serving.snapshots import Snapshot
from tests.support.helpers import wait_until
from tests.support.serving import put


@contextlib.asynccontextmanager
async def hub_running(hub: UpdateHub) -> AsyncIterator[None]:
    task = asyncio.create_task(hub.run())
    try:
        assert await hub.wait_connected(5)
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_mailbox_keeps_only_the_latest_value_per_key(redis: Redis, keys: Keys) -> None:
    hub = UpdateHub(redis, keys, read_timeout=1.0)
    async with hub_running(hub):
        with hub.watch(["item/1", "item/2"]) as box:
            versions = [await put(redis, keys, "item/1", {"n": n}) for n in range(50)]
            other = await put(redis, keys, "item/2", {"n": 0})
            await wait_until(lambda: _holds(box, "item/1", versions[-1]) and len(box) == 2, 5)
            taken = await box.take()
    # Fifty writes of item/1 wait as one: a reader that was busy gets the newest, not a backlog.
    assert [(s.key, s.version) for s in taken] == sorted(
        [("item/1", versions[-1]), ("item/2", other)], key=lambda kv: kv[1]
    )
    assert hub.mailboxes == 0
    assert hub.watched_keys == 0


async def test_values_written_while_not_subscribed_are_delivered_on_subscribing(redis: Redis, keys: Keys) -> None:
    hub = UpdateHub(redis, keys, read_timeout=1.0)
    with hub.watch(["item/1", "item/3"]) as box:
        version = await put(redis, keys, "item/1", {"n": 1})  # its notification reaches nobody
        assert len(box) == 0
        async with hub_running(hub):
            async with asyncio.timeout(5):
                (snapshot,) = await box.take()
    assert snapshot == Snapshot("item/1", version, b'{"n": 1}', version)


async def test_the_subscription_comes_back_after_redis_was_away_longer_than_it_may_stay_silent(
    redis_url: str, redis_server: EmbeddedRedis, keys: Keys
) -> None:
    client = create_redis(redis_url, timeout=1.0)
    hub = UpdateHub(client, keys, read_timeout=1.0, backoff_max=0.2)
    try:
        async with hub_running(hub):
            redis_server.kill()
            await wait_until(lambda: not hub.connected, 5, message="the hub never noticed")
            # The outage's length is what is tested: longer than the silence a subscription is allowed.
            await asyncio.sleep(PING_EVERY * 3 + 1.0 + 0.5)
            redis_server.restart(wipe=True)
            assert await hub.wait_connected(5), hub.health()
            with hub.watch(["item/1"]) as box:
                version = await put(client, keys, "item/1", {"n": 1})
                async with asyncio.timeout(5):
                    (snapshot,) = await box.take()
            assert snapshot.version == version
    finally:
        await client.aclose()


async def test_health_tells_why_and_for_how_long_the_subscription_is_down(keys: Keys) -> None:
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    hub = UpdateHub(dead, keys, read_timeout=1.0, backoff_max=0.1)
    task = asyncio.create_task(hub.run())
    try:
        await wait_until(lambda: "ConnectionError" in hub.health(), 5)
        assert hub.health().startswith("error: update subscription down for ")
        assert not await hub.wait_connected(0.1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await dead.aclose()


async def test_bad_arguments_are_refused(redis: Redis, keys: Keys) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        UpdateHub(redis, keys, read_timeout=0)


def _holds(box: Mailbox, key: str, version: int) -> bool:
    latest = box._latest.get(key)
    return latest is not None and latest.version == version
