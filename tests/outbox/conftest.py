"""A small ORM world for the outbox tests: items (tracked by two views) and notes (no view depends on them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import ForeignKey, String
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from freshviews.core import PK, Choice, Int, On, Params, Registry, View
from freshviews.outbox import outbox_table

COLORS = ("red", "green", "blue")


class Base(DeclarativeBase):
    pass


class Owner(Base):
    __tablename__ = "owners"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    color: Mapped[str] = mapped_column(String(10))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("owners.id"))


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(40))


OUTBOX = outbox_table(Base.metadata)


async def _compute(_ctx: Any, **_params: Any) -> dict[str, Any]:
    return {}


async def _nothing(_ctx: Any) -> list[Params]:
    return []


REGISTRY: Registry[Any] = Registry(
    [
        View("item/{id}", compute=_compute, enumerate=_nothing, depends_on=[On("items", id=PK)],
             params={"id": Int(minimum=1)}),
        View("color/{color}", compute=_compute, enumerate=_nothing, depends_on=[On("items", color="color")],
             params={"color": Choice(COLORS)}),
        View("owner/{id}", compute=_compute, enumerate=_nothing,
             depends_on=[On("owners", id=PK), On("items", id="owner_id")], params={"id": Int(minimum=1)}),
    ]
)  # fmt: skip


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'items.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
