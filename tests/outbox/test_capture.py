"""Capture from SQLAlchemy: every ORM write to a tracked entity leaves its change in the outbox, in its transaction."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, delete, event, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from freshviews.core import Change
from freshviews.core.events import FIELD, decode
from freshviews.outbox import Capture, track
from freshviews.outbox.table import OutboxRow

from .conftest import OUTBOX, REGISTRY, Base, Item, Note, Owner


class Commits:
    """An ``on_commit``: counts the commits that captured changes, and keeps the rows each handed over."""

    def __init__(self) -> None:
        self.count = 0
        self.rows: list[OutboxRow] = []

    def __call__(self, rows: list[OutboxRow]) -> None:
        self.count += 1
        self.rows.extend(rows)


@pytest.fixture
def commits() -> Commits:
    return Commits()


@pytest.fixture
def capture(sessions: async_sessionmaker[AsyncSession], commits: Commits) -> Iterator[Capture]:
    tracking = track(sessions, REGISTRY, table=OUTBOX, on_commit=commits)
    try:
        yield tracking
    finally:
        tracking.remove()


async def outbox(engine: AsyncEngine) -> list[Change]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(OUTBOX.c.change).order_by(OUTBOX.c.id))).scalars().all()
    return [decode({FIELD: row.encode()}) for row in rows]


@pytest.mark.usefixtures("capture")
async def test_inserts_updates_and_deletes_record_the_tracked_columns_before_and_after(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], commits: Commits
) -> None:
    async with sessions() as session:
        session.add(Owner(id=7, name="ann"))
        session.add(item := Item(id=1, name="one", color="red", owner_id=7))
        await session.commit()
        item.color = "blue"
        item.name = "renamed"
        await session.commit()
        await session.delete(item)
        await session.commit()
    changes = await outbox(engine)
    (owner,) = [c for c in changes if c.entity == "owners"]
    created, moved, deleted = [c for c in changes if c.entity == "items"]
    assert (owner.entity, owner.op.value, owner.after) == ("owners", "c", {"id": 7})
    assert (created.entity, created.id, created.op.value) == ("items", "1", "c")
    # The primary key and the columns the views map; not the name, which no view depends on.
    assert (created.before, created.after) == (None, {"id": 1, "color": "red", "owner_id": 7})
    assert (moved.op.value, moved.before, moved.after) == (
        "u",
        {"id": 1, "color": "red", "owner_id": 7},
        {"id": 1, "color": "blue", "owner_id": 7},
    )
    assert (deleted.op.value, deleted.before, deleted.after) == ("d", {"id": 1, "color": "blue", "owner_id": 7}, None)
    assert commits.count == 3
    # What each commit handed to its relay is what it wrote: the rows' ids and changes, in order.
    async with engine.connect() as conn:
        stored = (await conn.execute(select(OUTBOX.c.id, OUTBOX.c.change).order_by(OUTBOX.c.id))).all()
    assert commits.rows == [(row_id, change) for row_id, change in stored]


@pytest.mark.usefixtures("capture")
async def test_a_rolled_back_write_leaves_no_change_and_wakes_nobody(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], commits: Commits
) -> None:
    async with sessions() as session:
        session.add(Item(id=1, name="one", color="red"))
        await session.flush()
        await session.rollback()
    assert await outbox(engine) == []
    assert commits.count == 0


@pytest.mark.usefixtures("capture")
async def test_writes_no_view_depends_on_record_nothing_and_every_real_update_records_one(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], commits: Commits
) -> None:
    async with sessions() as session:
        session.add(Note(id=1, text="hello"))
        session.add(item := Item(id=1, name="one", color="red"))
        await session.commit()
        item.name = "only the name"  # no view maps it to a key, but a view may show it
        await session.commit()
        item.name = "only the name"  # no change at all
        await session.commit()
    assert [(c.entity, c.op.value) for c in await outbox(engine)] == [("items", "c"), ("items", "u")]
    assert commits.count == 2


@pytest.mark.usefixtures("capture")
async def test_update_and_delete_statements_record_one_change_per_row(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with sessions() as session:
        session.add_all([Item(id=i, name=f"n{i}", color="red") for i in (1, 2, 3)])
        await session.commit()
        await session.execute(update(Item).where(Item.id >= 2).values(color="green"))
        await session.execute(update(Item).where(Item.id == 1).values(name="untracked"))
        await session.execute(delete(Item).where(Item.id == 3))
        await session.execute(update(Item), [{"id": 1, "color": "blue"}])  # by primary key
        await session.commit()
    changes = (await outbox(engine))[3:]
    assert [(c.op.value, c.id, (c.before or {}).get("color"), (c.after or {}).get("color")) for c in changes] == [
        ("u", "2", "red", "green"),
        ("u", "3", "red", "green"),
        ("u", "1", "red", "red"),  # only its name changed: still a change, a view may show the name
        ("d", "3", "green", None),
        ("u", "1", "red", "blue"),
    ]


@pytest.mark.usefixtures("capture")
async def test_an_old_value_the_orm_never_loaded_is_left_out_not_guessed(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with sessions() as session:
        session.add(Item(id=1, name="one", color="red"))
        await session.commit()
    async with sessions() as session:
        item = await session.get(Item, 1)
        assert item is not None
        session.expire(item, ["color"])
        item.color = "blue"
        await session.commit()
    changed = (await outbox(engine))[-1]
    assert "color" not in (changed.before or {})
    # The old colour is unknown, so the change names no colour: every colour's key is recomputed, none left stale.
    assert changed.values("color") is None


async def test_removing_the_capture_stops_it(engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]) -> None:
    tracking = track(sessions, REGISTRY, table=OUTBOX)
    tracking.remove()
    async with sessions() as session:
        session.add(Item(id=1, name="one", color="red"))
        await session.commit()
    assert await outbox(engine) == []


def test_sync_sessions_are_captured_too(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'sync.db'}")
    Base.metadata.create_all(engine)
    maker: sessionmaker[Session] = sessionmaker(engine)
    commits = Commits()
    tracking = track(maker, REGISTRY, table=OUTBOX, on_commit=commits)
    try:
        with maker() as session:
            session.add(Item(id=5, name="five", color="green"))
            session.commit()
        with engine.connect() as conn:
            stored: list[Any] = list(conn.execute(select(OUTBOX.c.change)).scalars())
    finally:
        tracking.remove()
        engine.dispose()
    assert [json.loads(s)["a"] for s in stored] == [{"id": 5, "color": "green", "owner_id": None}]
    assert commits.count == 1


@pytest.fixture
async def savepoint_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """SQLite with real savepoints: pysqlite's own transaction handling is turned off and SQLAlchemy emits BEGIN
    (SQLAlchemy's documented recipe), so ``begin_nested()`` is a SAVEPOINT the database honours."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'savepoints.db'}")

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    try:
        yield engine
    finally:
        await engine.dispose()


async def _stored(engine: AsyncEngine) -> list[OutboxRow]:
    async with engine.connect() as conn:
        return [(i, c) for i, c in (await conn.execute(select(OUTBOX.c.id, OUTBOX.c.change).order_by(OUTBOX.c.id)))]


async def test_a_released_savepoint_hands_nothing_over_until_the_transaction_commits(
    savepoint_engine: AsyncEngine,
) -> None:
    sessions = async_sessionmaker(savepoint_engine, expire_on_commit=False)
    commits = Commits()
    tracking = track(sessions, REGISTRY, table=OUTBOX, on_commit=commits)
    try:
        async with sessions() as session:
            session.add(Item(id=1, name="one", color="red"))
            async with session.begin_nested():
                session.add(Item(id=2, name="two", color="blue"))
            # The savepoint is released, the transaction is not committed: nothing may reach the log yet.
            assert commits.count == 0
            await session.commit()
    finally:
        tracking.remove()
    assert commits.count == 1
    assert commits.rows == await _stored(savepoint_engine)
    assert len(commits.rows) == 2


async def test_a_rolled_back_savepoint_takes_its_rows_out_of_the_hand_over(savepoint_engine: AsyncEngine) -> None:
    sessions = async_sessionmaker(savepoint_engine, expire_on_commit=False)
    commits = Commits()
    tracking = track(sessions, REGISTRY, table=OUTBOX, on_commit=commits)
    try:
        async with sessions() as session:
            session.add(Item(id=3, name="three", color="red"))
            await session.flush()
            savepoint = await session.begin_nested()
            session.add(Item(id=4, name="four", color="green"))
            async with session.begin_nested():  # a savepoint inside the one rolled back goes with it
                session.add(Item(id=5, name="five", color="blue"))
            await savepoint.rollback()
            await session.commit()
    finally:
        tracking.remove()
    # Exactly what was committed: item 3, with the id it has in the table (a rolled-back row's id is reused by
    # SQLite, so handing a phantom over would name another row).
    assert commits.rows == await _stored(savepoint_engine)
    assert [decode({FIELD: c.encode()}).id for _, c in commits.rows] == ["3"]


async def test_a_session_closed_without_committing_hands_nothing_over_later(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], commits: Commits, capture: Capture
) -> None:
    session = sessions()
    session.add(Item(id=6, name="six", color="red"))
    await session.flush()
    await session.close()  # rolled back by the database; no rollback event
    # The same session, used again (close() leaves it usable).
    session.add(Item(id=7, name="seven", color="red"))
    await session.commit()
    await session.close()
    assert commits.rows == await _stored(engine)
    assert [decode({FIELD: c.encode()}).id for _, c in commits.rows] == ["7"]
