"""A failover under writes: the master holding the change log's slot killed (SIGKILL) while changes keep coming.

A cluster of its own (3 masters, 3 replicas, node timeout 1 s), so that the session's stays whole. The writer
appends each change until the change log takes it, as the outbox relay does (a change the log refused while
the slot had no master waits and is appended after the failover). A sampler reads every key's version every
10 ms and fails the test if one ever goes down. The promise: the subscriber resumes by itself (its consumer
applies the writes made after the failover), and the cache holds every write within 2 s of the failover and the
writes after it. A change the dead master acknowledged and had not yet sent to
its replica (asynchronous replication) is lost with it: the sweep repairs it, here every second
(``sweep_interval=1``), which keeps that case within the same bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from freshviews.core.connections import create_redis
from freshviews.core.keys import DATA, VERSION, Keys
from freshviews.publish.publisher import Publisher
from freshviews.serving.hub import UpdateHub
from freshviews.worker.recompute import serialize
from freshviews.worker.service import Subscriber
from freshviews.worker.settings import SubscriberSettings
from tests.support.helpers import BUSY_MARGIN, wait_until
from tests.support.metrics import sample
from tests.support.redis_servers import NODE_TIMEOUT_MS, StartClusterNodes
from tests.support.serving import put
from tests.support.world import item_change, registry, seeded_world

#: Items, so that their keys land on every master.
ITEMS = 60
#: The promise after the failover is complete (plus BUSY_MARGIN for a loaded machine).
CONVERGED_WITHIN = 2.0
#: A failover takes the node timeout to notice, then an election: a bound for the set-up, not a promise.
FAILOVER_WITHIN = 15.0


async def _versions(observer: RedisCluster, keys: Keys, view_keys: list[str]) -> list[bytes | None]:
    async with observer.pipeline(transaction=False) as pipe:
        for key in view_keys:
            pipe.hget(keys.value(key), VERSION)
        return list(await pipe.execute())


async def test_the_change_logs_master_killed_under_writes_resumes_and_converges_within_failover_plus_2s(
    start_cluster_nodes: StartClusterNodes, keys: Keys
) -> None:
    nodes = start_cluster_nodes(6, node_timeout_ms=NODE_TIMEOUT_MS)
    await nodes.form(replicas=1)
    url = nodes.cluster_url()
    world = seeded_world(ITEMS)
    view_keys = sorted(f"item/{i}" for i in world.items)
    settings = SubscriberSettings(
        redis_url=url, consumer="c1", sweep_interval=1, sample_rate=0, metrics_port=0, block_ms=100
    )
    client = create_redis(url)
    observer = RedisCluster.from_url(url.replace("+cluster", "", 1))
    subscriber = Subscriber(redis=client, registry=registry, ctx=world, settings=settings)
    task = asyncio.create_task(subscriber.run())
    publisher = Publisher(create_redis(url), keys, timeout=1.0)
    highest: dict[str, int] = {}
    downs: list[tuple[str, int, int]] = []
    writing = True
    written = 0

    async def cached_as_written() -> list[str]:
        """The keys whose cached value is not the world's now (none: converged)."""
        async with observer.pipeline(transaction=False) as pipe:
            for key in view_keys:
                pipe.hget(keys.value(key), DATA)
            found = await pipe.execute()
        return [k for k, data in zip(view_keys, found, strict=True) if data != serialize(world.items[int(k[5:])])]

    async def write() -> None:
        nonlocal written
        while writing:
            item = written % ITEMS + 1
            world.items[item]["name"] = f"write {written}"
            # Until the log takes it, as the outbox relay does with a row.
            while True:
                if await publisher.publish(item_change(item)):
                    break
                await asyncio.sleep(0.05)
            written += 1
            await asyncio.sleep(0.01)

    async def watch_versions() -> None:
        while True:
            with contextlib.suppress(RedisError, RedisClusterException, OSError):
                for key, raw in zip(view_keys, await _versions(observer, keys, view_keys), strict=True):
                    if raw is None:
                        continue
                    version = int(raw)
                    if version < highest.get(key, 0):
                        downs.append((key, highest[key], version))
                    highest[key] = max(version, highest.get(key, 0))
            await asyncio.sleep(0.01)

    tasks: list[asyncio.Task[Any]] = []
    try:
        await subscriber.wait_for_redis()
        await wait_until(lambda: _empty(cached_as_written), timeout=15, message="the cache was never warm")
        tasks = [asyncio.create_task(write()), asyncio.create_task(watch_versions())]
        await wait_until(lambda: written >= 50, timeout=10, message="the writer made no progress")

        master = observer.get_node_from_key(keys.changes)
        assert master is not None
        killed = time.monotonic()
        nodes.kill(int(master.port))

        async def failed_over() -> bool:
            return len(await nodes.masters()) == 3 and int(master.port) not in await nodes.masters()

        await wait_until(failed_over, timeout=FAILOVER_WITHIN, interval=0.05, message="no replica took over")
        failover = time.monotonic() - killed
        # Writes go on past the failover, then stop; every one of them must reach the cache.
        at_failover = written
        consumed = sample("freshviews_changes_consumed_total", {"entity": "item"})
        await wait_until(lambda: written >= at_failover + 20, timeout=10, message="writes did not resume")
        writing = False
        await tasks[0]
        await wait_until(
            lambda: _empty(cached_as_written),
            timeout=CONVERGED_WITHIN + BUSY_MARGIN,
            interval=0.02,
            message=lambda: f"not converged 2s after the last write (failover took {failover:.1f}s)",
        )
        converged = time.monotonic() - killed
        assert not task.done(), "the subscriber stopped"

        async def resumed() -> bool:
            return sample("freshviews_changes_consumed_total", {"entity": "item"}) - consumed >= 20

        # The consumer itself resumed and applied the writes made after the failover (the sweep, every second here,
        # is the backstop and may have converged the cache first on a loaded machine): within the same bound.
        await wait_until(
            resumed, timeout=CONVERGED_WITHIN + BUSY_MARGIN, message="the consumer did not resume after the failover"
        )
        assert downs == [], f"versions went down: {downs[:5]}"
        assert len(highest) == ITEMS
        print(f"failover {failover:.2f}s, converged {converged:.2f}s after the kill, {written} writes")
    finally:
        writing = False
        for extra in tasks:
            extra.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        subscriber.stop()
        await asyncio.wait_for(task, 15)
        for redis in (client, observer, publisher._redis):
            await redis.aclose()


async def _empty(stale: Any) -> bool:
    try:
        return not await stale()
    except (RedisError, RedisClusterException, OSError):
        return False


async def _subscribed_node(ports: list[int], channel: str) -> int | None:
    for port in ports:
        client = Redis(port=port)
        try:
            [(_, count)] = await client.pubsub_numsub(channel)
        except (RedisError, OSError):
            continue
        finally:
            await client.aclose()
        if int(count):
            return port
    return None


async def test_the_node_of_the_update_subscription_killed_the_hub_resubscribes_and_resyncs(
    start_cluster_nodes: StartClusterNodes, keys: Keys
) -> None:
    nodes = start_cluster_nodes(6, node_timeout_ms=NODE_TIMEOUT_MS)
    await nodes.form(replicas=1)
    url = nodes.cluster_url()
    client = create_redis(url)
    writer = RedisCluster.from_url(url.replace("+cluster", "", 1))
    hub = UpdateHub(client, keys, read_timeout=1.0, backoff_max=0.5)
    task = asyncio.create_task(hub.run())
    try:
        await writer.initialize()
        assert await hub.wait_connected(10)
        port = await _subscribed_node(nodes.alive(), keys.updates_channel)
        assert port is not None
        # A key on another master: its write succeeds while the subscription's node is dead.
        key = next(
            f"item/{n}" for n in range(1, 100) if int(writer.get_node_from_key(keys.value(f"item/{n}")).port) != port
        )
        with hub.watch([key]) as box:
            nodes.kill(port)
            killed = time.monotonic()
            await wait_until(lambda: not hub.connected, timeout=5, message="the hub never noticed")
            # Its notification reaches nobody: the resync after resubscribing delivers it.
            lost = await put(writer, keys, key, {"n": 1})
            await wait_until(lambda: hub.connected, timeout=FAILOVER_WITHIN, message=hub.health)
            async with asyncio.timeout(2 + BUSY_MARGIN):
                while (snapshot := (await box.take())[-1]).version < lost:
                    pass
            assert snapshot.data == b'{"n": 1}'
            resubscribed = time.monotonic() - killed
            # And notifications flow again, on the node the hub subscribed on now.
            after = await put(writer, keys, key, {"n": 2})
            async with asyncio.timeout(2 + BUSY_MARGIN):
                while (snapshot := (await box.take())[-1]).version < after:
                    pass
            assert await _subscribed_node(nodes.alive(), keys.updates_channel) not in (None, port)
        print(f"resubscribed and resynced {resubscribed:.2f}s after the kill")
    finally:
        hub.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for redis in (client, writer):
            await redis.aclose()
