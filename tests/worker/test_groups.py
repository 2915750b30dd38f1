"""The group reader: own pending entries first, coalesced backlogs, and a lost group recreated, not fatal."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from freshviews.worker.groups import Entry, GroupReader, group_gone
from freshviews.worker.settings import SubscriberSettings
from tests.support.helpers import wait_until

STREAM = "test:groups:stream"
GROUP = "subscribers"
#: Slack for a loaded 2-core machine on top of each bound the product promises.
MARGIN = 2.0

MakeReader = Callable[..., GroupReader]


class Recorder:
    """A ``process`` that records each batch's ids and acknowledges the batch; it can be told to fail once."""

    def __init__(self, redis: Redis, group: str = GROUP) -> None:
        self.redis = redis
        self.group = group
        self.batches: list[list[bytes]] = []
        self.fail_next = False

    async def __call__(self, entries: list[Entry]) -> None:
        self.batches.append([entry_id for entry_id, _ in entries])
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the batch failed before its acknowledgement")
        await self.redis.xack(STREAM, self.group, *[entry_id for entry_id, _ in entries])


@pytest.fixture
def reader(redis_url: str, redis: Redis) -> MakeReader:
    """A reader of ``STREAM`` for one consumer; settings overrides by keyword."""

    def make(
        consumer: str = "c1", *, coalesce: int = 0, on_lost: Callable[[], None] | None = None, **overrides: Any
    ) -> GroupReader:
        settings = SubscriberSettings(redis_url=redis_url, consumer=consumer, metrics_port=0, **overrides)
        return GroupReader(redis, STREAM, settings, coalesce=coalesce, on_lost=on_lost)

    return make


async def _add(redis: Redis, count: int) -> list[bytes]:
    return [cast(bytes, await redis.xadd(STREAM, {"n": str(n)})) for n in range(count)]


async def _groups(redis: Redis) -> list[bytes]:
    try:
        return [group["name"] for group in await redis.xinfo_groups(STREAM)]
    except ResponseError:
        return []  # no stream


async def test_ensure_creates_the_group_once_and_starts_at_the_beginning(redis: Redis, reader: MakeReader) -> None:
    first = await _add(redis, 2)  # before the group exists: a new group replays them
    one = reader()
    assert await one.ensure() is True
    assert await one.ensure() is False  # BUSYGROUP is "already there", not an error
    assert await _groups(redis) == [GROUP.encode()]
    process = Recorder(redis)
    assert await one.step(process, block=False) == 2
    assert process.batches == [first]


async def test_own_pending_entries_are_handed_out_before_new_ones(redis: Redis, reader: MakeReader) -> None:
    await reader().ensure()
    left = await _add(redis, 2)
    assert [entry_id for entry_id, _ in await reader().read()] == left  # delivered, never acknowledged: a crash
    new = await _add(redis, 1)
    process = Recorder(redis)
    # The same consumer name in its next life, and another consumer of the same group.
    assert await reader("c2").step(process, block=False) == 1
    assert process.batches == [new]  # c1's entries are not c2's to retry
    process.batches.clear()
    more = await _add(redis, 1)
    assert await reader("c1").step(process, block=False) == 3
    assert process.batches == [left, more]
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 0


async def test_a_batch_that_failed_is_retried_before_anything_new(redis: Redis, reader: MakeReader) -> None:
    one = reader()
    await one.ensure()
    failed = await _add(redis, 2)
    process = Recorder(redis)
    process.fail_next = True
    with pytest.raises(RuntimeError):
        await one.step(process, block=False)
    new = await _add(redis, 1)
    assert await one.step(process, block=False) == 3
    assert process.batches == [failed, failed, new]


async def test_a_backlog_is_coalesced_into_one_batch_up_to_the_limit(redis: Redis, reader: MakeReader) -> None:
    plain = reader("plain", batch_size=2, group="plain")
    coalescing = reader("coalescing", batch_size=2, coalesce=5)
    await plain.ensure()
    await coalescing.ensure()
    ids = await _add(redis, 7)
    process = Recorder(redis)
    # Reads of 2 are extended while they come back full and the batch is under 5: 2 + 2 + 2, then the rest.
    assert await coalescing.step(process, block=False) == 6
    assert await coalescing.step(process, block=False) == 1
    assert process.batches == [ids[:6], ids[6:]]
    # Without coalescing (another group, reading the same entries), one read is one batch.
    unextended = Recorder(redis, group="plain")
    assert await plain.drain(unextended) == 7
    assert [len(batch) for batch in unextended.batches] == [2, 2, 2, 1]


async def test_a_lost_group_is_recreated_and_reported(redis: Redis, reader: MakeReader) -> None:
    lost: list[str] = []
    one = reader(on_lost=lambda: lost.append("lost"))
    await one.ensure()
    process = Recorder(redis)
    await _add(redis, 1)
    assert await one.step(process, block=False) == 1

    await redis.xgroup_destroy(STREAM, GROUP)  # an operator, or Redis restarted empty
    assert await one.step(process, block=False) == 0  # NOGROUP: recreated, not raised
    assert lost == ["lost"]
    assert await _groups(redis) == [GROUP.encode()]

    await redis.delete(STREAM)  # the stream itself, group and all
    assert await one.step(process, block=False) == 0
    assert lost == ["lost", "lost"]
    assert await _groups(redis) == [GROUP.encode()]
    after = await _add(redis, 1)
    assert await one.step(process, block=False) == 1
    assert process.batches[-1] == after


async def test_a_stream_deleted_under_a_blocked_read_is_recreated(redis: Redis, reader: MakeReader) -> None:
    block_ms = 300
    lost: list[str] = []
    one = reader(block_ms=block_ms, on_lost=lambda: lost.append("lost"))
    await one.ensure()
    process = Recorder(redis)
    done = asyncio.Event()

    async def loop() -> None:
        # Ended by a flag: a cancellation landing in a redis-py command can be lost on Python 3.11.
        while not done.is_set():
            await one.step(process)

    task = asyncio.create_task(loop())
    try:
        await wait_until(lambda: _blocked(redis), timeout=MARGIN, message="the reader never blocked")
        await redis.delete(STREAM)
        # Redis >= 7 ends the blocked read at once (UNBLOCKED); 6.2 lets it time out empty and the next read is
        # NOGROUP. Either way the group is back within one blocked read.
        await wait_until(
            lambda: _groups(redis), timeout=block_ms / 1000 + MARGIN, message="the group was not recreated"
        )
        assert lost == ["lost"]
        after = await _add(redis, 1)
        await wait_until(lambda: after in process.batches, timeout=block_ms / 1000 + MARGIN, message="not read")
        assert not task.done(), task.exception()
    finally:
        done.set()
        await asyncio.wait_for(task, timeout=block_ms / 1000 + MARGIN)


async def _blocked(redis: Redis) -> bool:
    return int((await redis.info("clients"))["blocked_clients"]) >= 1


def test_group_gone_knows_the_error_codes() -> None:
    assert group_gone(ResponseError("NOGROUP No such key 'fv:{changes}' or consumer group 'g' in XREADGROUP"))
    assert group_gone(ResponseError("UNBLOCKED the stream key no longer exists"))
    assert not group_gone(ResponseError("BUSYGROUP Consumer Group name already exists"))
    assert not group_gone(ResponseError("ERR no such key"))
    assert not group_gone(ResponseError("an error that merely mentions NOGROUP"))
    assert not group_gone(RedisConnectionError("NOGROUP"))
