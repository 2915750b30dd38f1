"""The relay: moves outbox rows to the change log, at least once, and deletes them once they are in.

Two ways in. The fast one: the capture hands the relay of the writing process the rows each commit wrote
(:meth:`Relay.hand`); the relay appends them from memory at once (one Redis round trip, no database read) and
deletes them later, in one transaction per ``DELETE_DELAY`` rather than one per commit: on SQLite, which writes
one transaction at a time, a delete per commit held the lock the next write needed and made every write slower.
The other: a pass over the table (:meth:`Relay.relay`) takes up to ``batch_size`` rows in id order, appends them in
one round trip, deletes them and commits. If Redis fails the transaction rolls back and the rows stay; if the
process dies between an append and the delete, the rows are appended again later with the same origin
(``outbox:<id>``): harmless, a recompute reads the source. Several relays share a pass's work without sending a row
twice on PostgreSQL (``FOR UPDATE SKIP LOCKED``); on SQLite ``BEGIN IMMEDIATE`` makes them take turns.

A relay passes over the table at start, when told (:meth:`Relay.wake`), on PostgreSQL when the ``NOTIFY
freshviews_outbox`` of a writer without a relay of its own arrives (:meth:`Relay.listen`), after a failure, and
every ``interval`` seconds. The timed pass leaves rows younger than ``HANDOFF_GRACE`` to the writer that handed
them to its own relay; what a writer that died after its commit left behind is that old soon enough.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterable, Sequence
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
from freshviews.outbox.table import OutboxRow, OutboxStatus, outbox_status, outbox_table

logger = logging.getLogger(__name__)

RELAYED = Counter("freshviews_outbox_relayed_total", "Outbox rows appended to the change log")
RELAY_PASSES = Counter("freshviews_outbox_passes_total", "Passes of the relays over the outbox table")
RELAY_ERRORS = Counter("freshviews_outbox_relay_errors_total", "Relay steps that failed and were retried", ["kind"])
OUTBOX_ROWS = Gauge("freshviews_outbox_rows", "Changes waiting in the outbox (as last measured)")
OUTBOX_AGE = Gauge("freshviews_outbox_oldest_seconds", "Age of the oldest change waiting in the outbox")

#: The longest wait between attempts after a failure, seconds: rows wait at most that long after Redis is back.
BACKOFF_MAX = 0.5
#: How long rows sent from memory wait to be deleted, seconds (the deletes of that time go in one transaction).
DELETE_DELAY = 0.2
#: Rows younger than this, seconds, are left out of a timed pass: the writer's own relay has them in memory and
#: deletes them within ``DELETE_DELAY``; far above it, so that only a writer that is gone (or stuck) is covered.
HANDOFF_GRACE = 1.0
#: The most handed rows kept in memory; beyond it they wait for a pass over the table (nothing is lost).
HANDOFF_MAX = 10_000
#: Ids per DELETE statement (SQLite's bound on variables is 32,766; a long IN list also plans slowly).
DELETE_CHUNK = 500


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
        # Rows handed over at commit, not sent yet; ids sent, not deleted yet (and since when).
        self._handed: list[OutboxRow] = []
        self._sent: list[int] = []
        self._sent_since = 0.0
        # A pass over the whole table is due (at start, when woken, after a failure).
        self._scan = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None

    # -- moving rows -------------------------------------------------------------------------------------

    async def relay(self, *, older_than: float = 0.0) -> int:
        """Move up to ``batch_size`` rows at least ``older_than`` seconds old; the number moved (0: none left, or
        another relay has them). Rows this relay sent from memory are deleted in the same transaction."""
        sent = list(self._sent)
        async with self.engine.connect() as conn:
            if self._sqlite:
                # Take the write lock before reading: two relays on one file take turns instead of both sending.
                await conn.execute(text("BEGIN IMMEDIATE"))
            await self._delete(conn, sent)
            rows = (await conn.execute(self._next_rows(older_than))).all()
            if rows:
                await self._append([(row[0], row[1]) for row in rows])
                await self._delete(conn, [row[0] for row in rows])
            if not rows and not sent:
                await conn.rollback()
                return 0
            await conn.commit()
        self._forget(len(sent))
        if self._handed and rows:
            # A row committed while this pass ran may be in both: it is sent, so not again from memory.
            moved = {row[0] for row in rows}
            self._handed = [row for row in self._handed if row[0] not in moved]
        RELAYED.inc(len(rows))
        return len(rows)

    def _next_rows(self, older_than: float) -> Any:
        query = select(self.table.c.id, self.table.c.change).order_by(self.table.c.id).limit(self._batch_size)
        if older_than > 0:
            query = query.where(self.table.c.created_ms <= int((time.time() - older_than) * 1000))
        return query if self._sqlite else query.with_for_update(skip_locked=True)

    async def _delete(self, conn: AsyncConnection, ids: Sequence[int]) -> None:
        for start in range(0, len(ids), DELETE_CHUNK):
            await conn.execute(delete(self.table).where(self.table.c.id.in_(ids[start : start + DELETE_CHUNK])))

    def _forget(self, deleted: int) -> None:
        # Ids are only appended while a delete runs, so the first ``deleted`` are the ones it took.
        del self._sent[:deleted]
        if self._sent:
            self._sent_since = time.monotonic()

    async def send_handed(self) -> int:
        """Append the rows handed over since the last call; the number sent. On failure they are dropped from
        memory (they wait in the table) and the next pass looks at the whole table."""
        rows, self._handed = self._handed, []
        if not rows:
            return 0
        try:
            await self._append(rows)
        except BaseException:
            self._scan = True
            raise
        if not self._sent:
            self._sent_since = time.monotonic()
        self._sent.extend(row_id for row_id, _ in rows)
        if len(self._sent) > HANDOFF_MAX:
            # Deletes keep failing: forget the oldest ids rather than grow; a later pass sends those rows again
            # (harmless: a recompute reads the source) and deletes them.
            del self._sent[: len(self._sent) - HANDOFF_MAX]
        RELAYED.inc(len(rows))
        return len(rows)

    async def delete_sent(self) -> None:
        """Delete the rows sent from memory, in one transaction."""
        sent = list(self._sent)
        if not sent:
            return
        async with self.engine.begin() as conn:
            await self._delete(conn, sent)
        self._forget(len(sent))

    async def _append(self, rows: Sequence[tuple[int, str]]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for row_id, change in rows:
                # The row's id goes in as the change's origin (the JSON object's last member).
                entry = f'{change[:-1]},"x":"outbox:{row_id}"}}'
                pipe.xadd(self._keys.changes, {FIELD: entry.encode()}, maxlen=self._maxlen, approximate=True)
            await pipe.execute()

    async def drain(self, *, older_than: float = 0.0) -> int:
        """Move rows until the outbox is empty (as far as this relay can see); the number moved."""
        moved = 0
        while count := await self.relay(older_than=older_than):
            moved += count
        return moved

    async def status(self) -> OutboxStatus:
        """The outbox's depth and the age of its oldest row, also kept in the relay's gauges."""
        found = await outbox_status(self.engine, self.table)
        OUTBOX_ROWS.set(found.rows)
        OUTBOX_AGE.set(found.oldest_seconds)
        return found

    # -- running -----------------------------------------------------------------------------------------

    def hand(self, rows: Iterable[OutboxRow]) -> None:
        """Send ``rows``, just committed by this process, from memory (the capture's ``on_commit``; safe to call
        from any thread: a synchronous session's commit runs in a worker thread). No rows: a commit whose rows'
        ids are unknown (a database without INSERT ... RETURNING), so pass over the table."""
        self._call(self._take, list(rows) or None)

    def wake(self) -> None:
        """Pass over the whole table now (safe to call from any thread)."""
        self._call(self._take, None)

    def _call(self, func: Any, arg: Any) -> None:
        loop = self._loop
        if loop is None or threading.get_ident() == self._thread:
            func(arg)
            return
        try:
            loop.call_soon_threadsafe(func, arg)
        except RuntimeError:
            # The relay's loop is closed (the app is shutting down): the commit stands, and its rows wait in the
            # table for the next relay's pass. Never an error in a write that already committed.
            logger.info("relay: its loop is closed; the committed rows wait in the outbox for the next pass")

    def _take(self, rows: list[OutboxRow] | None) -> None:
        if rows is None or len(self._handed) + len(rows) > HANDOFF_MAX:
            self._scan = True  # too many in memory (the relay is stuck): the table has them
        else:
            self._handed.extend(rows)
        self._woken.set()

    def stop(self) -> None:
        """Make :meth:`run` return after one last pass, and :meth:`listen` return."""
        self._stopped.set()
        self._scan = True
        self._woken.set()

    async def run(self, *, interval: float) -> None:
        """Relay whenever woken, and every ``interval`` seconds, until :meth:`stop`; failures are retried with
        backoff (the database or Redis being away is weather), and each is logged once per attempt."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._scan = True  # whatever writers left before this relay started goes first
        self._woken.set()
        delay = 0.1
        timed_at = time.monotonic() + interval
        while True:
            wait = timed_at - time.monotonic()
            if self._sent:
                wait = min(wait, self._sent_since + DELETE_DELAY - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, 0.0)):
                    await self._woken.wait()
            self._woken.clear()
            try:
                await self._step(timed=time.monotonic() >= timed_at)
                delay = 0.1
            except (RedisError, RedisClusterException, DBAPIError, OperationalError, OSError) as exc:
                self._scan = True
                RELAY_ERRORS.labels("redis" if isinstance(exc, RedisError) else "database").inc()
                logger.warning("relay: %s; retrying in %.1fs", describe(exc), delay)
                if self._stopped.is_set():
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopped.wait()
                delay = min(delay * 2, BACKOFF_MAX)
                self._woken.set()
            if time.monotonic() >= timed_at:
                timed_at = time.monotonic() + interval
            if self._stopped.is_set():
                return

    async def _step(self, *, timed: bool) -> None:
        await self.send_handed()
        if self._scan or timed:
            whole, self._scan = self._scan, False
            await self.drain(older_than=0.0 if whole else HANDOFF_GRACE)
            RELAY_PASSES.inc()
        elif self._sent and time.monotonic() >= self._sent_since + DELETE_DELAY:
            await self.delete_sent()

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
