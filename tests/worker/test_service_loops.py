"""How the supervisor treats its loops: the shutdown grace period, Redis errors, a lost group, failing sources,
and a loop that fails for any other reason."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import cast

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from freshviews.core.connections import RedisConfigError
from freshviews.core.keys import DATA, Keys
from freshviews.publish.publisher import Publisher
from freshviews.worker.service import REDIS_RETRY_FIRST, SOURCE_RETRY_FIRST
from tests.support.helpers import wait_until
from tests.support.metrics import sample
from tests.support.world import World, item_change
from tests.worker.helpers import MakeSubscriber, cached, stop

#: Slack on top of each bound the product promises, for a loaded 2-core machine.
MARGIN = 2.0
#: How early asyncio may wake against time.monotonic() (timer resolution), seconds.
EARLY = 0.02
SERVICE_LOG = "freshviews.worker.service"


async def _pending(redis: Redis, keys: Keys) -> int:
    return int((await redis.xpending(keys.changes, "subscribers"))["pending"])


async def _name(redis: Redis, keys: Keys, item_id: int) -> str | None:
    data = (await cached(redis, keys, f"item/{item_id}")).get(DATA)
    return None if data is None else str(json.loads(data)["name"])


async def _last_sweep(redis: Redis, keys: Keys) -> bytes | None:
    return cast("bytes | None", await redis.hget(keys.sweep, "reason"))


def _messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if text in record.getMessage()]


async def test_stop_gives_a_busy_batch_the_shutdown_timeout_then_hands_it_back(
    redis: Redis,
    keys: Keys,
    world: World,
    make_subscriber: MakeSubscriber,
    publisher: Publisher,
    caplog: pytest.LogCaptureFixture,
) -> None:
    grace = 1.0
    sub = make_subscriber(shutdown_timeout=grace, reclaim_interval=0.1)
    await sub.start()  # warm now, so that run() has no warm-up to do
    world.items[1]["name"] = "held"
    gate = world.hold("item/1")  # never released: the batch outlives the grace period
    await publisher.publish(item_change(1, color="green"))
    task = asyncio.create_task(sub.run())
    await asyncio.wait_for(gate.reached.wait(), timeout=MARGIN)
    with caplog.at_level(logging.WARNING, logger=SERVICE_LOG):
        elapsed = await stop(sub, task, budget=grace + MARGIN)
    assert grace - EARLY <= elapsed < grace + MARGIN, f"stop() returned after {elapsed:.2f}s"
    assert task.result() is None
    assert _messages(caplog, "handing back")
    assert await _pending(redis, keys) == 1  # handed back, not lost and not acknowledged

    # The consumer's next life retries its own pending change first.
    assert await make_subscriber().drain() == 1
    assert await _name(redis, keys, 1) == "held"
    assert await _pending(redis, keys) == 0


async def test_stop_lets_a_batch_that_finishes_within_the_timeout_be_acknowledged(
    redis: Redis,
    keys: Keys,
    world: World,
    make_subscriber: MakeSubscriber,
    publisher: Publisher,
    caplog: pytest.LogCaptureFixture,
) -> None:
    grace = 5.0
    sub = make_subscriber(shutdown_timeout=grace, reclaim_interval=0.1)
    await sub.start()
    world.items[1]["name"] = "finished"
    gate = world.hold("item/1")
    await publisher.publish(item_change(1, color="green"))
    task = asyncio.create_task(sub.run())
    await asyncio.wait_for(gate.reached.wait(), timeout=MARGIN)
    with caplog.at_level(logging.WARNING, logger=SERVICE_LOG):
        sub.stop()
        gate.release.set()  # the batch was still busy when stop() was called
        elapsed = await stop(sub, task, budget=grace)
    assert elapsed < grace, "stop() waited out the whole timeout for a batch that had finished"
    assert not _messages(caplog, "handing back")
    assert await _name(redis, keys, 1) == "finished"
    assert await _pending(redis, keys) == 0


def _fail_first(
    errors: list[Exception], real: Callable[[], Awaitable[None]], calls: list[float]
) -> Callable[[], Awaitable[None]]:
    """A replacement for a step's call that raises ``errors`` one per call, then behaves as ``real``."""

    async def flaky() -> None:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        await real()

    return flaky


async def test_a_redis_error_in_a_loop_is_retried_with_backoff(
    keys: Keys, world: World, make_subscriber: MakeSubscriber, caplog: pytest.LogCaptureFixture
) -> None:
    sub = make_subscriber(reclaim_interval=0.05)
    await sub.start()
    errors: list[Exception] = [
        RedisConnectionError("Connection reset by peer"),
        ResponseError("BUSY Redis is busy running a script"),  # a reply, and weather too
        RedisTimeoutError("Timeout reading from socket"),
    ]
    calls: list[float] = []
    sub.consumer.update_gauges = _fail_first(errors, sub.consumer.update_gauges, calls)  # type: ignore[method-assign,assignment]
    before = sample("freshviews_subscriber_redis_errors_total", {"loop": "reclaim"})
    delays = [REDIS_RETRY_FIRST * 2**n for n in range(len(errors))]  # 0.1, 0.2, 0.4: doubling
    with caplog.at_level(logging.WARNING, logger=SERVICE_LOG):
        task = asyncio.create_task(sub.run())
        try:
            await wait_until(lambda: len(calls) > len(errors) + 1, timeout=sum(delays) + MARGIN, message="stuck")
            assert not task.done()
        finally:
            await stop(sub, task, budget=MARGIN)
    gaps = [later - earlier for earlier, later in itertools.pairwise(calls)]
    for gap, delay in zip(gaps, delays, strict=False):
        assert gap >= delay - EARLY, f"retried after {gap:.3f}s, not backing off {delay}s"
    assert sample("freshviews_subscriber_redis_errors_total", {"loop": "reclaim"}) - before == len(errors)
    assert len(_messages(caplog, "reclaim loop: Redis error")) == len(errors)


async def test_a_refusal_from_redis_ends_run_with_a_configuration_error(
    make_subscriber: MakeSubscriber, caplog: pytest.LogCaptureFixture
) -> None:
    # A permission the ACL user lacks does not come back by retrying: the CLI exits 2 with the reason.
    sub = make_subscriber(reclaim_interval=0.05)
    await sub.start()
    refusal = ResponseError("NOPERM this user has no permissions to run the 'xinfo|groups' command")
    sub.consumer.update_gauges = _fail_first([refusal], sub.consumer.update_gauges, [])  # type: ignore[method-assign,assignment]
    with pytest.raises(RedisConfigError, match="lacks a permission"):
        await asyncio.wait_for(sub.run(), timeout=MARGIN)  # the reclaim loop's first step refuses at once


async def test_a_loop_failing_for_another_reason_ends_run_with_its_error(
    redis: Redis, keys: Keys, make_subscriber: MakeSubscriber, caplog: pytest.LogCaptureFixture
) -> None:
    sub = make_subscriber(reclaim_interval=0.05)
    await sub.start()

    async def broken() -> None:
        raise LookupError("a bug in the reclaim loop")

    sub.consumer.update_gauges = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger=SERVICE_LOG), pytest.raises(LookupError, match="a bug"):
        # The reclaim loop's first step fails at once; run() returns only once every other loop has ended.
        await asyncio.wait_for(sub.run(), timeout=MARGIN)
    assert _messages(caplog, "reclaim loop failed")
    assert await redis.exists(keys.heartbeat("c1")) == 0  # run() cleaned up behind the loops


async def test_a_loop_whose_cancellation_is_lost_still_ends_when_another_fails(
    make_subscriber: MakeSubscriber,
) -> None:
    # On Python 3.11 a cancellation landing in a redis-py command can be swallowed (asyncio.wait_for): a loop must
    # not outlive a failed sibling because of that, or the process would hang instead of exiting.
    sub = make_subscriber(reclaim_interval=0.05, shutdown_timeout=1.0)
    await sub.start()
    deaf_entered = asyncio.Event()

    async def deaf() -> None:
        deaf_entered.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)

    async def failing_refresh() -> None:
        await deaf_entered.wait()
        raise LookupError("a bug in the refresh loop")

    sub.consumer.update_gauges = deaf  # type: ignore[method-assign]
    sub.refresher.step = failing_refresh  # type: ignore[method-assign]
    with pytest.raises(LookupError, match="a bug"):
        await asyncio.wait_for(sub.run(), timeout=MARGIN)


async def test_a_lost_change_group_is_recreated_and_swept(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, publisher: Publisher
) -> None:
    block_s = 0.1
    # No sweep timer: only the recovery path can sweep after the warm-up.
    sub = make_subscriber(sweep_interval=0, reclaim_interval=0.05, block_ms=int(block_s * 1000))
    task = asyncio.create_task(sub.run())
    try:
        await wait_until(lambda: _last_sweep(redis, keys), timeout=MARGIN, message="no warm-up")
        assert await _last_sweep(redis, keys) == b"warm"
        reclaim_errors = sample("freshviews_subscriber_redis_errors_total", {"loop": "reclaim"})
        world.items[2]["name"] = "changed while the log was gone"  # only a sweep can find this one
        await redis.delete(keys.changes)
        # Found by the consume loop's next read, within one blocked read; the sweep of 8 keys takes milliseconds.
        await wait_until(
            lambda: _name_is(redis, keys, 2, "changed while the log was gone"),
            timeout=block_s + MARGIN,
            message="not swept after the group was lost",
        )

        async def recorded() -> bool:
            return await _last_sweep(redis, keys) == b"recover"

        # The sweep's record is written after its last chunk (and that chunk's pacing), just after the value.
        await wait_until(recorded, timeout=MARGIN, message="the recovery sweep was not recorded")
        assert [g["name"] for g in await redis.xinfo_groups(keys.changes)] == [b"subscribers"]
        # The reclaim loop found nothing to claim in the lost group: no Redis error, no backoff.
        assert sample("freshviews_subscriber_redis_errors_total", {"loop": "reclaim"}) == reclaim_errors

        world.items[3]["name"] = "after the loss"
        await publisher.publish(item_change(3, color="red"))
        await wait_until(lambda: _name_is(redis, keys, 3, "after the loss"), timeout=block_s + MARGIN)
        assert not task.done()
    finally:
        await stop(sub, task, budget=MARGIN)


async def _name_is(redis: Redis, keys: Keys, item_id: int, name: str) -> bool:
    return await _name(redis, keys, item_id) == name


async def test_a_failing_source_is_retried_with_backoff_and_one_warning_per_attempt(
    redis: Redis, keys: Keys, world: World, make_subscriber: MakeSubscriber, caplog: pytest.LogCaptureFixture
) -> None:
    sub = make_subscriber(sweep_interval=0)
    world.enumerate_failures = 2  # the warm-up's first two attempts find no table
    delays = [SOURCE_RETRY_FIRST, SOURCE_RETRY_FIRST * 2]
    with caplog.at_level(logging.WARNING, logger=SERVICE_LOG):
        task = asyncio.create_task(sub.run())
        try:
            await wait_until(lambda: _last_sweep(redis, keys), timeout=sum(delays) + MARGIN, message="never warmed")
            assert not task.done()
        finally:
            await stop(sub, task, budget=MARGIN)
    assert await _last_sweep(redis, keys) == b"warm"
    assert world.enumerate_failures == 0
    warnings = _messages(caplog, "the views' source failed")
    assert len(warnings) == 2
    for warning, delay in zip(warnings, delays, strict=True):
        assert warning.startswith("warm sweep:")
        assert "ConnectionRefusedError: the items table is not there yet" in warning
        assert f"retrying in {delay:.1f}s" in warning
    for key in world.view_keys():
        assert DATA in await cached(redis, keys, key), key
