"""The relay: moves outbox rows to the change log, at least once, and deletes them once they are in.

One step (:meth:`Relay.relay`) takes up to ``batch_size`` rows in id order, appends them to the change log in one
Redis round trip, deletes them and commits. If Redis fails the transaction rolls back and the rows stay; if the
process dies between the append and the commit the rows are appended again later, with the same origin
(``outbox:<id>``): harmless, a recompute reads the source. Several relays share the work without sending a row
twice on PostgreSQL (``FOR UPDATE SKIP LOCKED``); on SQLite ``BEGIN IMMEDIATE`` makes them take turns.

A relay wakes when told (:meth:`Relay.wake`, which the capture calls after each commit in the writing process),
on PostgreSQL when a writing transaction's ``NOTIFY freshviews_outbox`` arrives (:meth:`Relay.listen`), and
otherwise every ``interval`` seconds, to pick up whatever a writer that died right after its commit left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import Counter, Gauge
from redis.exceptions import RedisClusterException, RedisError
from sqlalchemy import Table, delete, select, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from freshviews.core.clients import RedisClient
from freshviews.core.connections import describe
from freshviews.core.events import FIELD
from freshviews.core.settings import RedisSettings
from freshviews.outbox.capture import NOTIFY_CHANNEL
from freshviews.outbox.table import OutboxStatus, outbox_status, outbox_table

logger = logging.getLogger(__name__)

RELAYED = Counter("freshviews_outbox_relayed_total", "Outbox rows appended to the change log")
RELAY_ERRORS = Counter("freshviews_outbox_relay_errors_total", "Relay steps that failed and were retried", ["kind"])
OUTBOX_ROWS = Gauge("freshviews_outbox_rows", "Changes waiting in the outbox (as last measured)")
OUTBOX_AGE = Gauge("freshviews_outbox_oldest_seconds", "Age of the oldest change waiting in the outbox")

#: The longest wait between attempts after a failure, seconds: rows wait at most that long after Redis is back.
BACKOFF_MAX = 0.5


class Relay:
    """Moves rows from the outbox table of ``engine``'s database to the change log in ``redis``."""

    def __init__(
        self,
        engine: AsyncEngine,
        redis: RedisClient,
        settings: RedisSettings,
        *,
        table: Table | None = None,
        batch_size: int = 500,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.engine = engine
        self.table = table if table is not None else outbox_table()
        self._redis = redis
        self._keys = settings.keys
        self._maxlen = settings.stream_maxlen
        self._batch_size = batch_size
        self._sqlite = engine.dialect.name == "sqlite"
        self._woken = asyncio.Event()
        self._stopped = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None

    # -- moving rows -------------------------------------------------------------------------------------

    async def relay(self) -> int:
        """Move up to ``batch_size`` rows; the number moved (0: the outbox is empty, or another relay has them)."""
        async with self.engine.connect() as conn:
            if self._sqlite:
                # Take the write lock before reading: two relays on one file take turns instead of both sending.
                await conn.execute(text("BEGIN IMMEDIATE"))
            rows = (await conn.execute(self._next_rows())).all()
            if not rows:
                await conn.rollback()
                return 0
            await self._append([(row[0], row[1]) for row in rows])
            await conn.execute(delete(self.table).where(self.table.c.id.in_([row[0] for row in rows])))
            await conn.commit()
        RELAYED.inc(len(rows))
        return len(rows)

    def _next_rows(self) -> Any:
        query = select(self.table.c.id, self.table.c.change).order_by(self.table.c.id).limit(self._batch_size)
        return query if self._sqlite else query.with_for_update(skip_locked=True)

    async def _append(self, rows: Sequence[tuple[int, str]]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for row_id, change in rows:
                # The row's id goes in as the change's origin (the JSON object's last member).
                entry = f'{change[:-1]},"x":"outbox:{row_id}"}}'
                pipe.xadd(self._keys.changes, {FIELD: entry.encode()}, maxlen=self._maxlen, approximate=True)
            await pipe.execute()

    async def drain(self) -> int:
        """Move rows until the outbox is empty (as far as this relay can see); the number moved."""
        moved = 0
        while count := await self.relay():
            moved += count
        return moved

    async def status(self) -> OutboxStatus:
        """The outbox's depth and the age of its oldest row, also kept in the relay's gauges."""
        found = await outbox_status(self.engine, self.table)
        OUTBOX_ROWS.set(found.rows)
        OUTBOX_AGE.set(found.oldest_seconds)
        return found

    # -- running -----------------------------------------------------------------------------------------

    def wake(self) -> None:
        """Relay now (safe to call from any thread: a synchronous session's commit runs in a worker thread)."""
        loop = self._loop
        if loop is None or threading.get_ident() == self._thread:
            self._woken.set()
        else:
            loop.call_soon_threadsafe(self._woken.set)

    def stop(self) -> None:
        """Make :meth:`run` return after one last pass, and :meth:`listen` return."""
        self._stopped.set()
        self._woken.set()

    async def run(self, *, interval: float) -> None:
        """Relay whenever woken, and every ``interval`` seconds, until :meth:`stop`; failures are retried with
        backoff (the database or Redis being away is weather), and each is logged once per attempt."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._woken.set()  # whatever writers left before this relay started goes first
        delay = 0.1
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._woken.wait()
            self._woken.clear()
            try:
                await self.drain()
                delay = 0.1
            except (RedisError, RedisClusterException, DBAPIError, OperationalError, OSError) as exc:
                RELAY_ERRORS.labels("redis" if isinstance(exc, RedisError) else "database").inc()
                logger.warning("relay: %s; retrying in %.1fs", describe(exc), delay)
                if self._stopped.is_set():
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopped.wait()
                delay = min(delay * 2, BACKOFF_MAX)
                self._woken.set()
            if self._stopped.is_set():
                return

    async def listen(self) -> None:
        """On PostgreSQL, wake on every writing transaction's ``NOTIFY`` until cancelled (reconnecting after a
        failure); elsewhere return at once."""
        if self.engine.dialect.name != "postgresql":
            return
        delay = 0.5
        while not self._stopped.is_set():
            try:
                async with self.engine.connect() as conn:
                    await self._listen_on(conn)
            except (DBAPIError, OperationalError, OSError) as exc:
                logger.warning("relay: listening for %s failed (%s); retrying in %.1fs", NOTIFY_CHANNEL, exc, delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopped.wait()
                delay = min(delay * 2, BACKOFF_MAX)

    async def _listen_on(self, conn: AsyncConnection) -> None:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        closed = asyncio.Event()

        def notified(*_args: Any) -> None:
            self.wake()

        await driver.add_listener(NOTIFY_CHANNEL, notified)  # type: ignore[union-attr]
        driver.add_termination_listener(lambda *_: closed.set())  # type: ignore[union-attr]
        self._woken.set()  # whatever was committed before we listened
        try:
            while not self._stopped.is_set() and not closed.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        await _first(closed, self._stopped)
                await conn.execute(text("SELECT 1"))  # a dead link surfaces as an error, not silence
        finally:
            with contextlib.suppress(Exception):
                await driver.remove_listener(NOTIFY_CHANNEL, notified)  # type: ignore[union-attr]

    @asynccontextmanager
    async def running(self, *, interval: float = 1.0, stop_timeout: float = 5.0) -> AsyncIterator[Relay]:
        """Run the relay (and its listener) in this process while the block runs; on the way out, stop it after one
        last pass (at most ``stop_timeout`` seconds). For an app's lifespan."""
        tasks = [
            asyncio.create_task(self.run(interval=interval), name="freshviews-relay"),
            asyncio.create_task(self.listen(), name="freshviews-relay-listen"),
        ]
        for task in tasks:
            task.add_done_callback(_report)
        try:
            yield self
        finally:
            self.stop()
            _, late = await asyncio.wait(tasks, timeout=stop_timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _first(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _report(task: asyncio.Task[None]) -> None:
    # A bug in the relay must not leave the outbox filling silently: the subscriber's relay still picks the rows
    # up, but say so loudly.
    if not task.cancelled() and task.exception() is not None:
        logger.error("the relay stopped: %s", describe(task.exception()))  # type: ignore[arg-type]
