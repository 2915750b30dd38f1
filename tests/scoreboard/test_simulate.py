"""The load generator against the backend on a real socket."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from typing import cast

import pytest
import uvicorn
from redis.asyncio import Redis
from sqlalchemy import text

from freshviews.core.events import decode
from freshviews.core.keys import Keys
from freshviews.outbox import outbox_status
from freshviews.scoreboard.db import Database
from freshviews.scoreboard.main import create_app
from freshviews.scoreboard.models import OUTBOX
from freshviews.scoreboard.settings import AppSettings
from freshviews.scoreboard.simulate import _Pool, simulate
from tests.support.helpers import free_port, wait_until


@pytest.fixture
async def base_url(make_settings: Callable[..., AppSettings], redis_url: str) -> AsyncIterator[str]:
    port = free_port()
    config = uvicorn.Config(
        create_app(make_settings(redis_url)), host="127.0.0.1", port=port, log_level="warning", ws="none", http="h11"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started or task.done(), timeout=30, message="uvicorn did not start")
    assert not task.done(), "uvicorn exited at start-up"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_the_simulator_writes_at_the_requested_rate_and_every_change_reaches_the_log(
    base_url: str, redis: Redis, db: Database
) -> None:
    summary = await simulate(base_url, rate=40, duration=1.5, seed=3, players=60, teams=6, scores=600)
    assert summary.errors == {}
    assert 45 <= summary.writes + sum(summary.missing.values()) <= 70
    assert summary.done["score_create"] > summary.writes / 2
    # 5 s: the relay wakes at each commit; the margin is for a loaded machine.
    await wait_until(lambda: _empty(db), timeout=5, message="the app's relay left rows in the outbox")
    async with db.engine.connect() as conn:
        written = await conn.scalar(text("SELECT seq FROM sqlite_sequence WHERE name = 'freshviews_outbox'"))
    origins = [
        str(decode(cast("dict[bytes, bytes]", fields)).origin) for _, fields in await redis.xrange(Keys().changes)
    ]
    # Every outbox row written is in the log, once; a score write leaves two (its player's total moves too).
    assert sorted(origins) == sorted(f"outbox:{i}" for i in range(1, written + 1))
    assert written >= summary.writes
    assert "writes in" in summary.line()


async def _empty(db: Database) -> bool:
    return (await outbox_status(db.engine, OUTBOX)).rows == 0


async def test_the_simulator_counts_unreachable_backends_as_errors() -> None:
    summary = await simulate(f"http://127.0.0.1:{free_port()}", rate=20, duration=0.3, seed=1, players=5)
    assert summary.writes == 0
    assert sum(summary.errors.values()) >= 3


@pytest.mark.parametrize(("rate", "duration"), [(0, 1), (-1, 1), (1, -1)])
async def test_nonsense_pacing_is_refused(rate: float, duration: float) -> None:
    with pytest.raises(ValueError, match=r"rate|duration"):
        await simulate("http://127.0.0.1:1", rate=rate, duration=duration, seed=1)


def test_pool_add_discard_choice() -> None:
    pool = _Pool(range(1, 4))
    pool.discard(2)
    pool.discard(2)
    pool.add(9)
    pool.add(9)
    rng = random.Random(0)
    assert {pool.choice(rng) for _ in range(200)} == {1, 3, 9}
    for item in (1, 3, 9):
        pool.discard(item)
    assert pool.choice(rng) is None
