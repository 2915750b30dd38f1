"""The relay: outbox rows reach the change log at least once, each with its row as origin, and then leave the outbox."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import cast

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import event, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from freshviews.core import Change, Keys, Operation, RedisSettings
from freshviews.core.connections import create_redis
from freshviews.core.events import decode
from freshviews.outbox import Relay, capturing
from freshviews.outbox.relay import DELETE_DELAY, HANDOFF_GRACE
from tests.support.helpers import BUSY_MARGIN, free_port, wait_until
from tests.support.metrics import sample

from .conftest import OUTBOX, REGISTRY, Item


def _settings(redis_url: str) -> RedisSettings:
    return RedisSettings(redis_url=redis_url)


async def _fill(engine: AsyncEngine, count: int, *, age: float = 0.0) -> None:
    """``count`` rows as a writer that committed ``age`` seconds ago and never relayed them left them."""
    created = int((time.time() - age) * 1000)
    rows = [
        {"change": Change(entity="items", id=str(i), op=Operation.UPDATE, after={"color": "red"}).encode().decode(),
         "created_ms": created}
        for i in range(1, count + 1)
    ]  # fmt: skip
    async with engine.begin() as conn:
        await conn.execute(insert(OUTBOX), rows)


async def _left(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return len((await conn.execute(select(OUTBOX.c.id))).all())


async def _count(redis: Redis, keys: Keys, wanted: int) -> bool:
    return int(await redis.xlen(keys.changes)) >= wanted


async def _logged(redis: Redis, keys: Keys) -> list[Change]:
    return [decode(cast("dict[bytes, bytes]", fields)) for _, fields in await redis.xrange(keys.changes)]


async def test_rows_reach_the_log_with_their_origin_and_leave_the_outbox(
    engine: AsyncEngine, redis: Redis, redis_url: str, keys: Keys
) -> None:
    await _fill(engine, 3)
    relay = Relay(engine, redis, _settings(redis_url), table=OUTBOX)
    assert await relay.drain() == 3
    logged = await _logged(redis, keys)
    assert [(c.id, c.origin) for c in logged] == [("1", "outbox:1"), ("2", "outbox:2"), ("3", "outbox:3")]
    assert await _left(engine) == 0
    status = await relay.status()
    assert (status.rows, status.oldest_seconds) == (0, 0.0)


async def test_when_redis_fails_the_rows_stay_until_it_answers(
    engine: AsyncEngine, redis: Redis, redis_url: str, keys: Keys
) -> None:
    await _fill(engine, 2)
    dead = create_redis(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    try:
        with pytest.raises(RedisError):
            await Relay(engine, dead, _settings(redis_url), table=OUTBOX).relay()
    finally:
        await dead.aclose()
    assert await _left(engine) == 2
    status = await Relay(engine, redis, _settings(redis_url), table=OUTBOX).status()
    assert status.rows == 2
    assert await Relay(engine, redis, _settings(redis_url), table=OUTBOX).drain() == 2
    assert len(await _logged(redis, keys)) == 2


async def test_two_relays_on_one_sqlite_file_send_each_row_once(
    engine: AsyncEngine, redis: Redis, redis_url: str, keys: Keys
) -> None:
    await _fill(engine, 600)
    relays = [Relay(engine, redis, _settings(redis_url), table=OUTBOX, batch_size=50) for _ in range(2)]
    moved = await asyncio.gather(*(relay.drain() for relay in relays))
    assert sum(moved) == 600
    origins = [c.origin for c in await _logged(redis, keys)]
    assert len(origins) == len(set(origins)) == 600


async def test_a_commit_wakes_the_relay_of_its_process(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, redis_url: str, keys: Keys
) -> None:
    # The relay's timer is an hour: only the wake at commit can move the row.
    settings = _settings(redis_url)
    async with capturing(sessions, REGISTRY, redis=redis, settings=settings, table=OUTBOX, interval=3600):
        async with sessions() as session:
            session.add(Item(id=1, name="one", color="red"))
            await session.commit()
        # 5 s: the wake is immediate; the margin is for a loaded machine.
        await wait_until(lambda: redis.xlen(keys.changes), timeout=5, message="the commit did not wake the relay")
    (change,) = await _logged(redis, keys)
    assert (change.entity, change.id, change.after) == ("items", "1", {"id": 1, "color": "red", "owner_id": None})


async def test_a_timed_pass_leaves_rows_younger_than_the_grace_to_their_writers_relay(
    engine: AsyncEngine, redis: Redis, redis_url: str, keys: Keys
) -> None:
    relay = Relay(engine, redis, _settings(redis_url), table=OUTBOX)
    await _fill(engine, 2)  # just committed: their writer's relay has them in memory
    assert await relay.drain(older_than=HANDOFF_GRACE) == 0
    await _fill(engine, 1, age=HANDOFF_GRACE + 1)  # left by a writer that died
    assert await relay.drain(older_than=HANDOFF_GRACE) == 1
    assert await _left(engine) == 2
    assert len(await _logged(redis, keys)) == 1


async def test_commits_hand_their_rows_over_and_the_deletes_are_batched(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], redis: Redis, redis_url: str, keys: Keys
) -> None:
    # The relay's timer is an hour: what moves the rows is the hand-over at each commit.
    statements: list[str] = []

    deletes: list[float] = []

    def seen(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        verb = statement.split(None, 1)[0].upper()
        # The relay's reads take the change; the test's own (how many rows are left) only the id.
        if OUTBOX.name in statement and (verb != "SELECT" or f"{OUTBOX.name}.change" in statement):
            statements.append(verb)
            if verb == "DELETE":
                deletes.append(time.monotonic())

    async def commit(item_id: int) -> None:
        async with sessions() as session:
            session.add(Item(id=item_id, name="x", color="red"))
            await session.commit()

    async def relayed(count: int) -> bool:
        return await _count(redis, keys, count) and await _left(engine) == 0

    settings = _settings(redis_url)
    passes = sample("freshviews_outbox_passes_total")
    async with capturing(sessions, REGISTRY, redis=redis, settings=settings, table=OUTBOX, interval=3600):
        # The relay's pass over the table at its start is over: from now on only hand-overs move rows.
        await wait_until(lambda: sample("freshviews_outbox_passes_total") > passes, timeout=5, message="no start pass")
        await commit(0)
        # DELETE_DELAY + BUSY_MARGIN: sent at once, deleted within DELETE_DELAY; the margin is for a loaded machine.
        await wait_until(
            lambda: relayed(1), timeout=DELETE_DELAY + BUSY_MARGIN, message="the first commit was not relayed"
        )
        event.listen(engine.sync_engine, "before_cursor_execute", seen)
        started = time.monotonic()
        try:
            for item_id in range(1, 21):
                await commit(item_id)
            await wait_until(
                lambda: relayed(21), timeout=DELETE_DELAY + BUSY_MARGIN, message="the commits were not relayed"
            )
        finally:
            event.remove(engine.sync_engine, "before_cursor_execute", seen)
        elapsed = time.monotonic() - started
    print(f"20 commits relayed in {elapsed:.2f}s: {statements.count('DELETE')} deletes")
    assert statements.count("INSERT") == 20
    assert statements.count("SELECT") == 0  # sent from memory: the relay never read the table
    # One delete transaction per DELETE_DELAY at most: consecutive deletes that far apart (half of it allowed for
    # when each statement reached the database), however long the commits took.
    assert deletes
    gaps = [b - a for a, b in itertools.pairwise(deletes)]
    assert all(gap >= DELETE_DELAY / 2 for gap in gaps), gaps
    assert [c.id for c in await _logged(redis, keys)] == [str(i) for i in range(21)]


async def test_a_commit_handed_over_just_before_shutdown_is_sent_by_the_last_pass(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], redis: Redis, redis_url: str, keys: Keys
) -> None:
    settings = _settings(redis_url)
    async with (
        capturing(sessions, REGISTRY, redis=redis, settings=settings, table=OUTBOX, interval=3600),
        sessions() as session,
    ):
        session.add(Item(id=1, name="one", color="red"))
        await session.commit()
        # Out at once: the rows may still be in the relay's memory, sent but not deleted, or not even sent.
    assert await _left(engine) == 0
    assert [c.id for c in await _logged(redis, keys)] == ["1"]


async def test_rows_a_writer_left_behind_are_picked_up_on_the_timer(
    engine: AsyncEngine, redis: Redis, redis_url: str, keys: Keys
) -> None:
    relay = Relay(engine, redis, _settings(redis_url), table=OUTBOX)
    async with relay.running(interval=0.2):
        await _fill(engine, 4)  # no wake: as if the writer died right after its commit
        await wait_until(lambda: _count(redis, keys, 4), timeout=5, message="the timer never picked the rows up")
    assert await _left(engine) == 0
    assert len(await _logged(redis, keys)) == 4
