"""Killing and freezing subscriber processes in the middle of their work, and feeding them poison."""

from __future__ import annotations

import json
import signal
import time
from typing import cast

import pytest
from redis.typing import EncodableT, FieldT

from freshviews.core.keys import DATA
from tests.reliability.harness import KEYS, RECLAIM_IDLE_MS, World, converged, shows
from tests.support.helpers import wait_until
from tests.support.metrics import metric
from tests.support.world import ROWS, Source

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("writes", [10_000, pytest.param(100_000, marks=pytest.mark.chaos)])
async def test_a_subscriber_killed_mid_batch_loses_nothing(world: World, writes: int) -> None:
    # A short hold per compute keeps each batch in flight long enough to be killed inside one.
    world.start("sub-1", KV_DELAY_MS="5")
    await wait_until(lambda: world.cache.exists(KEYS.value("kv/1")), timeout=30, message="no warm-up")
    chunks = writes // 100
    for chunk in range(chunks):  # over 500 rows, 100 at a time
        await world.write([(chunk * 100 + i) % ROWS + 1 for i in range(100)], writer=f"w{chunk}")
        if chunk == chunks // 3:
            world.subscribers["sub-1"][0].kill()
            consumers = await world.cache.xinfo_consumers(KEYS.changes, "subscribers")
            assert sum(c["pending"] for c in consumers) > 0, "the kill did not land inside a batch"
    assert world.writes == writes
    world.start("sub-2")  # a new name: sub-1's batch comes back only through XAUTOCLAIM
    bound = RECLAIM_IDLE_MS / 1000 + 1 + writes / 5000  # + the time to apply the backlog
    elapsed = await converged(world, within=bound)
    assert elapsed <= bound, f"converged after {elapsed:.2f}s"
    assert not world.violations, world.violations[:5]
    assert metric(await world.metrics("sub-2"), "freshviews_changes_reclaimed_total") > 0


async def test_a_frozen_consumer_is_fenced_when_it_wakes(world: World) -> None:
    zombie = world.start("zombie", KV_DELAY_MS="1500", KV_DELAY_ROWS="7")
    await wait_until(lambda: world.cache.exists(KEYS.value("kv/1")), timeout=60, message="no warm-up")
    held = int(await world.source.get(Source.HELD) or 0)
    await world.write([7], writer="old")
    # Wait until the zombie holds the change: it has read row 7 and sleeps on it.
    await wait_until(
        lambda: _pending_on(world, "zombie"), timeout=10, message=f"the zombie never took the change\n{world.logs()}"
    )
    await wait_until(
        lambda: _held_since(world, held), timeout=10, message=f"the zombie never read the row\n{world.logs()}"
    )
    zombie.signal(signal.SIGSTOP)
    try:
        await world.write([7], writer="new")
        world.start("healthy")
        # The healthy consumer applies the newer change and, after the idle time, reclaims the zombie's one.
        await wait_until(
            lambda: _pending_on(world, "zombie", expect=0),
            timeout=10,
            message=f"the zombie's change was not reclaimed\n{world.logs()}",
        )
        # The newer value lands while the zombie still sleeps: its stale result must meet the fence.
        await wait_until(lambda: shows(world, 7, "new"), timeout=10, message=world.logs())
    finally:
        zombie.signal(signal.SIGCONT)
    # The zombie wakes and finishes its stale compute; the fence refuses the write.
    await wait_until(
        lambda: _fenced(world, "zombie"), timeout=10, message=f"no fence rejection counted\n{world.logs()}"
    )
    await converged(world, within=2)
    assert json.loads(cast(bytes, await world.cache.hget(KEYS.value("kv/7"), DATA)))["w"] == "new"
    assert not world.violations, world.violations[:5]


async def _held_since(world: World, held: int) -> bool:
    return int(await world.source.get(Source.HELD) or 0) > held


async def _pending_on(world: World, consumer: str, expect: int | None = None) -> bool:
    for entry in await world.cache.xinfo_consumers(KEYS.changes, "subscribers"):
        if entry["name"] in (consumer, consumer.encode()):
            return bool(entry["pending"] > 0) if expect is None else bool(entry["pending"] == expect)
    return expect == 0


async def _fenced(world: World, name: str) -> bool:
    return metric(await world.metrics(name), "freshviews_fence_rejections_total", view="kv") >= 1


async def test_poison_is_dead_lettered_and_healthy_changes_keep_flowing(world: World) -> None:
    world.start("sub-1")
    await wait_until(lambda: world.cache.exists(KEYS.value("kv/1")), timeout=30, message="no warm-up")
    poison: list[dict[FieldT, EncodableT]] = [
        {"c": b"\x00\xffnot json"},
        {"c": b'{"s": 1, "e": "row"}'},  # no id, no operation
        {"c": b'{"s": 1, "e": 5, "i": [1], "o": "zz", "t": "later"}'},  # wrong types
        {"c": b'{"s": 1, "e": "row", "i": "1", "o": "u", "t": 0, "h": {"pad": "' + b"x" * 1_000_000 + b'"}}'},
        {"c": b""},
        {"other": b"no change field"},
    ]
    # A change no view depends on is not poison: acknowledged, never dead-lettered.
    await world.cache.xadd(KEYS.changes, {"c": b'{"s": 2, "e": "planet", "i": "1", "o": "u", "t": 0}'})
    lags: list[float] = []
    for fields in poison:
        await world.cache.xadd(KEYS.changes, fields)
        started = time.monotonic()
        await world.write([42], writer=f"after poison {len(lags)}")
        await wait_until(lambda: shows(world, 42, f"after poison {len(lags)}"), timeout=5, message=world.logs())
        lags.append(time.monotonic() - started)
    await wait_until(lambda: _no_pending(world), timeout=5, message="poison left pending")
    letters = cast("list[tuple[bytes, dict[bytes, bytes]]]", await world.cache.xrange(KEYS.dead_letters))
    assert len(letters) == len(poison)
    assert all(fields[b"reason"] for _, fields in letters)
    assert max(lags) < 1.0, lags
    assert world.subscribers["sub-1"][0].running
    assert sorted(int(f[b"size"]) for _, f in letters)[-1] > 1_000_000  # the size is kept, the payload cut
    assert max(len(f[b"payload"]) for _, f in letters) <= 4096


async def _no_pending(world: World) -> bool:
    return await world.pending() == 0
