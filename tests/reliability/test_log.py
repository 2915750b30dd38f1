"""What can happen to the change log itself: Redis killed under writes, changes reordered and duplicated,
the log trimmed past unread changes, and changes that never reached it."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import cast

import pytest

from freshviews.core.embedded import EmbeddedRedis
from freshviews.core.events import Change, Operation
from freshviews.core.keys import DATA
from freshviews.publish.publisher import Publisher
from tests.reliability.harness import KEYS, World, converged, shows, warmed
from tests.support.helpers import wait_until
from tests.support.metrics import metric
from tests.support.world import ROWS, Source, render

pytestmark = pytest.mark.slow

SWEEP_INTERVAL = 2.0


@pytest.mark.parametrize("wipe", [True, False], ids=["restarted-empty", "restarted-from-aof"])
async def test_redis_killed_under_writes(world: World, redis_server: EmbeddedRedis, wipe: bool) -> None:
    world.start("sub-1", SUBSCRIBER_SWEEP_INTERVAL=str(SWEEP_INTERVAL))
    await warmed(world)
    stop = asyncio.Event()
    failed_publishes = 0

    async def keep_writing() -> None:
        nonlocal failed_publishes
        round_ = 0
        while not stop.is_set():
            if not await world.write([round_ % ROWS + 1, (round_ * 7) % ROWS + 1], writer=f"r{round_}"):
                failed_publishes += 1
            round_ += 1
            await asyncio.sleep(0.005)

    writer = asyncio.create_task(keep_writing())
    try:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(redis_server.kill)
        await asyncio.sleep(1.0)  # writes go on: their commits succeed, their publishes fail and are counted
        await asyncio.to_thread(redis_server.restart, wipe=wipe)
        back = time.monotonic()
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await writer
    assert failed_publishes > 0, "no write happened while Redis was down"
    elapsed = await converged(world, within=SWEEP_INTERVAL + 1)
    assert time.monotonic() - back <= SWEEP_INTERVAL + 1 + 1.5, f"converged {elapsed:.2f}s after the writes ended"
    assert world.subscribers["sub-1"][0].running, "the subscriber exited instead of waiting for Redis"
    assert world.subscribers["sub-1"][0].log().count("Traceback") == 0
    assert not world.violations or wipe, world.violations[:5]  # an empty Redis starts versions afresh


async def test_reordered_and_duplicated_changes_leave_the_same_bytes(world: World) -> None:
    world.start("sub-1")
    await warmed(world)
    changes: list[Change] = []
    for chunk in range(20):
        ids = random.Random(chunk).sample(range(1, ROWS + 1), 50)
        await world.write(ids, writer=f"c{chunk}")
        changes.extend(Change(entity="row", id=str(i), op=Operation.UPDATE) for i in ids)
    # Every change again, twice, in a shuffled order, after the newer ones.
    again = changes * 2
    random.Random(7).shuffle(again)
    for start in range(0, len(again), 200):
        await world.publisher.publish(*again[start : start + 200])
    await converged(world, within=5)
    rows = [cast("dict[bytes, bytes]", await world.source.hgetall(Source.row(i))) for i in range(1, ROWS + 1)]
    stored = [await world.cache.hget(KEYS.value(f"kv/{i}"), DATA) for i in range(1, ROWS + 1)]
    clean = [json.dumps(render(i, row), separators=(",", ":")).encode() for i, row in enumerate(rows, start=1)]
    assert stored == clean
    assert not world.violations, world.violations[:5]


async def test_a_log_trimmed_past_unread_changes_is_detected_once_and_swept(world: World) -> None:
    sub = world.start("sub-1")
    await warmed(world)
    await world.write([1], writer="read")
    await wait_until(lambda: shows(world, 1, "read"), timeout=5, message=world.logs())
    sub.stop()
    # More changes than the log keeps (MAXLEN ~500), while no subscriber runs.
    short_log = Publisher(world.cache, KEYS, maxlen=500, timeout=5.0)
    for chunk in range(30):
        ids = [(chunk * 100 + i) % ROWS + 1 for i in range(100)]
        async with world.source.pipeline(transaction=False) as pipe:
            for row_id in ids:
                pipe.hset(Source.row(row_id), "w", f"trimmed {chunk}")
            await pipe.execute()
        await short_log.publish(*(Change(entity="row", id=str(i), op=Operation.UPDATE) for i in ids))
    assert await world.cache.xlen(KEYS.changes) < 3000
    world.start("sub-2")
    await converged(world, within=3)

    async def swept() -> bool:
        return metric(await world.metrics("sub-2"), "freshviews_sweeps_total", reason="gap") == 1

    await wait_until(swept, timeout=5, message="no gap sweep")
    rounds = metric(await world.metrics("sub-2"), "freshviews_reclaim_rounds_total")

    async def checked_again() -> bool:
        return metric(await world.metrics("sub-2"), "freshviews_reclaim_rounds_total") >= rounds + 3

    # Three more rounds, each checking the log for gaps: the same hole must not be reported again.
    await wait_until(checked_again, timeout=10, message="the reclaim loop stopped")
    text = await world.metrics("sub-2")
    assert metric(text, "freshviews_log_gaps_total") == 1
    assert metric(text, "freshviews_sweeps_total", reason="gap") == 1
    assert world.subscribers["sub-2"][0].log().count("trimmed past changes never read") == 1


async def test_a_change_that_never_reached_the_log_is_repaired_within_one_sweep(world: World) -> None:
    world.start("sub-1", SUBSCRIBER_SWEEP_INTERVAL=str(SWEEP_INTERVAL))
    await warmed(world)
    repairs = metric(await world.metrics("sub-1"), "freshviews_sweep_repairs_total", view="kv")
    # Committed, and the backend died before publishing: nothing in the log.
    lost = [3, 33, 333]
    async with world.source.pipeline(transaction=False) as pipe:
        for row_id in lost:
            pipe.hset(Source.row(row_id), "w", "lost publish")
        await pipe.execute()
    committed = time.monotonic()
    for row_id in lost:
        await wait_until(lambda r=row_id: shows(world, r, "lost publish"), timeout=SWEEP_INTERVAL + 3)
    assert time.monotonic() - committed <= SWEEP_INTERVAL + 1
    after = metric(await world.metrics("sub-1"), "freshviews_sweep_repairs_total", view="kv")
    assert after - repairs == len(lost)
