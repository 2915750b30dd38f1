"""Slow, silent and reset links between the subscriber and Redis: detected, survived, nothing lost.

A fault proxy sits between the subscriber process and Redis; the writer talks to Redis directly, so changes
keep arriving while the subscriber's link is bad.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.reliability.harness import World, converged, shows, warmed
from tests.support.helpers import wait_until
from tests.support.proxy import FaultProxy

pytestmark = pytest.mark.slow

#: A dead link must be noticed (and the subscriber back at work) within this long after it heals.
DETECT_WITHIN = 10.0


@pytest.fixture
async def proxy(world: World) -> AsyncIterator[FaultProxy]:
    port = int(world.cache_url.rsplit(":", 1)[1].split("/")[0])
    proxy = FaultProxy(port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def test_latency_silence_and_resets(world: World, proxy: FaultProxy) -> None:
    world.start("sub-1", redis_url=f"redis://127.0.0.1:{proxy.port}/0")
    await warmed(world)

    # 500 ms each way: slow, but every change still lands.
    proxy.latency = 0.5
    await world.write([1, 2, 3], writer="slow link")
    await wait_until(lambda: shows(world, 3, "slow link"), timeout=15, message=world.logs())
    proxy.latency = 0.0

    # A link that stops answering (half-open): commands time out, and once it heals the subscriber is back
    # within DETECT_WITHIN, with the changes written meanwhile.
    proxy.freeze()
    await world.write([4, 5], writer="while silent")
    await asyncio.sleep(3)  # longer than the client's socket timeout (2 s): the silence must be noticed
    proxy.thaw()
    healed = time.monotonic()
    await wait_until(lambda: shows(world, 5, "while silent"), timeout=DETECT_WITHIN, message=world.logs())
    assert time.monotonic() - healed < DETECT_WITHIN

    # Every connection reset at once, twice, mid-stream.
    for round_ in range(2):
        await world.write(list(range(10, 60)), writer=f"reset {round_}")
        proxy.reset_all()
        writer = f"reset {round_}"
        await wait_until(lambda w=writer: shows(world, 59, w), timeout=DETECT_WITHIN, message=world.logs())

    await converged(world, within=5)
    assert not world.violations, world.violations[:5]
    assert world.subscribers["sub-1"][0].running, "the subscriber exited instead of reconnecting"
