"""The log source: transactions from the replication slot to the change log, then the slot's position moved.

:class:`LogSource` prepares the publication and the slot (created if missing), then runs
:class:`~freshviews.pglog.stream.ReplicationStream` and, for each transaction it hands over, appends its changes
to the change log in one ``MULTI`` (the transaction's changes reach the log together, and in commit order) and
only then confirms the transaction's end to the slot. The never-lose argument: the slot's confirmed position is
the only state, and it moves only past transactions whose changes are in the log; a source killed at any point
restarts from that position, so a transaction is either in the log already (and is appended again: harmless,
a recompute reads the source, and the change carries the same origin ``pg:<commit LSN>:<n>``) or not yet
confirmed (and is sent again by the server).

A database or Redis away is weather: the session ends, a warning is logged, and it starts again with backoff
(at most :data:`RETRY_MAX` apart); so is a watched table not created yet (looked for again, at most
:data:`TABLE_RETRY_MAX` apart). A configuration the database refuses (``wal_level``, a table without a key)
is a :class:`~freshviews.core.settings.ConfigError`, raised at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence

import psycopg2
from redis.exceptions import RedisClusterException, RedisError

from freshviews.core.clients import RedisClient
from freshviews.core.connections import describe
from freshviews.core.events import FIELD
from freshviews.core.keys import Keys
from freshviews.pglog import database, metrics
from freshviews.pglog.decoding import ColumnsOf, Decoder, Transaction
from freshviews.pglog.stream import ReplicationStream

logger = logging.getLogger(__name__)

RETRY_FIRST = 0.2
RETRY_MAX = 2.0
#: Longest wait between looks for a watched table not created yet, seconds.
TABLE_RETRY_MAX = 5.0
#: How often the source measures its slot's lag and publishes its status, seconds.
STATUS_INTERVAL = 2.0


class LogSource:
    """Reads ``slot`` on the database at ``url`` into the change log of ``redis``.

    ``tables`` are the watched tables (the publication's); ``columns`` says which columns a change carries for an
    entity (``Registry.columns``; None: every column).
    """

    def __init__(
        self,
        *,
        url: str,
        redis: RedisClient,
        keys: Keys,
        slot: str,
        publication: str,
        tables: Sequence[str],
        columns: ColumnsOf = None,
        maxlen: int = 100_000,
        dead_letter_maxlen: int = 10_000,
    ) -> None:
        self._url = url
        self._redis = redis
        self._keys = keys
        self.slot = slot
        self.publication = publication
        self.tables = tuple(tables)
        self._columns = columns
        self._maxlen = maxlen
        self._dead_maxlen = dead_letter_maxlen
        self._stopped = asyncio.Event()
        #: Commit time of the oldest transaction received and not yet in the log (epoch ms), None when caught up.
        self._waiting_since: int | None = None
        self.transactions = 0
        self.changes = 0
        self._warned: set[str] = set()

    def stop(self) -> None:
        self._stopped.set()

    async def prepare(self) -> database.Prepared:
        """Create the publication and the slot where missing; warn about tables without old values."""
        prepared = await asyncio.to_thread(
            database.ensure, self._url, slot=self.slot, publication=self.publication, tables=self.tables
        )
        if prepared.created_slot:
            logger.info("created replication slot %s: it keeps WAL until this source confirms it", self.slot)
        for table in prepared.without_old_values:
            key = set(prepared.primary_keys.get(table, ()))
            if table in self._warned or (self._columns is not None and not self._columns(table) - key):
                continue  # said once per source; or the views map only the key, which the log always carries
            self._warned.add(table)
            logger.warning(
                "table %s has no REPLICA IDENTITY FULL: its updates and deletes carry no old values, so views "
                "mapping its non-key columns recompute every key (ALTER TABLE %s REPLICA IDENTITY FULL)",
                table, table,
            )  # fmt: skip
        return prepared

    async def run(self) -> None:
        """Prepare, then stream until :meth:`stop`, starting again after each failure."""
        delay = RETRY_FIRST
        # Owned here and awaited on the way out; it survives its own failures (see status()).
        status = asyncio.create_task(self._status_loop(), name="pglog-status")
        try:
            while not self._stopped.is_set():
                try:
                    prepared = await self.prepare()
                    await self._session(prepared.primary_keys)
                    delay = RETRY_FIRST
                except database.TableMissing as exc:
                    # Weather, like the database being away: the app that creates the tables may start later.
                    logger.warning("log source: %s; again in %.1fs", exc, delay)
                    await self._sleep(delay)
                    delay = min(delay * 2, TABLE_RETRY_MAX)
                except (psycopg2.Error, OSError) as exc:
                    metrics.ERRORS.labels("database").inc()
                    logger.warning("log source: the database failed (%s); again in %.1fs", _first_line(exc), delay)
                    await self._sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
        finally:
            # Stopped first: a cancellation can be lost inside a Redis call (asyncio.wait_for on Python 3.11), and
            # then the status loop would go on forever; its own condition ends it at its next step instead.
            self._stopped.set()
            status.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await status

    async def _session(self, primary_keys: dict[str, tuple[str, ...]]) -> None:
        decoder = Decoder(entities=frozenset(self.tables), columns=self._columns, primary_keys=primary_keys)
        stream = ReplicationStream(self._url, slot=self.slot, publication=self.publication, decoder=decoder)
        stream.start()
        try:
            while not self._stopped.is_set():
                getting = asyncio.ensure_future(stream.queue.get())
                stopping = asyncio.ensure_future(self._stopped.wait())
                try:
                    await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopping.cancel()
                if not getting.done():
                    getting.cancel()
                    return
                item = getting.result()
                if isinstance(item, BaseException):
                    raise item
                if self._waiting_since is None:
                    self._waiting_since = item.committed_ms
                if not await self._append(item):
                    return
                stream.confirm(item.end_lsn)
                self._waiting_since = None if stream.queue.empty() else self._waiting_since
        finally:
            await stream.join()

    async def _append(self, tx: Transaction) -> bool:
        """Append ``tx``'s changes (and dead letters) in one MULTI, retrying Redis until it answers; False when
        stopped first (the transaction is not confirmed, so the slot sends it again)."""
        delay = RETRY_FIRST
        while True:
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    for change in tx.changes:
                        pipe.xadd(self._keys.changes, {FIELD: change.encode()}, maxlen=self._maxlen, approximate=True)
                    for letter in tx.dead:
                        pipe.xadd(
                            self._keys.dead_letters,
                            {"id": letter.origin, "reason": letter.reason, "kind": "pglog", "attempts": 0},
                            maxlen=self._dead_maxlen,
                            approximate=True,
                        )
                    if tx.changes or tx.dead:
                        await pipe.execute()
                break
            except (RedisError, RedisClusterException, OSError) as exc:
                metrics.ERRORS.labels("redis").inc()
                logger.warning("log source: Redis failed (%s); again in %.1fs", describe(exc), delay)
                if await self._sleep(delay):
                    return False
                delay = min(delay * 2, RETRY_MAX)
        self.transactions += 1
        self.changes += len(tx.changes)
        metrics.TRANSACTIONS.inc()
        metrics.CHANGES.inc(len(tx.changes))
        for letter in tx.dead:
            metrics.DEAD_LETTERS.inc()
            logger.error("log source: dead-lettered %s: %s", letter.origin, letter.reason)
        metrics.COMMIT_TO_LOG.observe(max(0.0, time.time() - tx.committed_ms / 1000))
        return True

    def lag_seconds(self) -> float:
        """How long the oldest transaction received and not yet in the change log has waited (0: none)."""
        since = self._waiting_since
        return 0.0 if since is None else max(0.0, time.time() - since / 1000)

    async def status(self) -> dict[str, object]:
        """The slot's lag (bytes from the database, seconds from this source), as ``check`` reads it."""
        found: dict[str, object] = {"slot": self.slot, "at": time.time(), "lag_seconds": round(self.lag_seconds(), 3)}
        try:
            lag = await asyncio.to_thread(database.slot_lag, self._url, self.slot)
        except (psycopg2.Error, OSError) as exc:
            found["error"] = _first_line(exc)[:200]
        else:
            found["lag_bytes"] = None if lag is None else lag.lag_bytes
        return found

    async def _status_loop(self) -> None:
        while not self._stopped.is_set():
            status = await self.status()
            metrics.LAG_SECONDS.set(float(status["lag_seconds"]))  # type: ignore[arg-type]
            if isinstance(status.get("lag_bytes"), int):
                metrics.LAG_BYTES.set(status["lag_bytes"])  # type: ignore[arg-type]
            with contextlib.suppress(RedisError, OSError):
                ttl = int(STATUS_INTERVAL * 5)
                await self._redis.set(self._keys.pglog(self.slot), json.dumps(status), ex=ttl)
            await self._sleep(STATUS_INTERVAL)

    async def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` or until stopped; whether stopped."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopped.wait()
        return self._stopped.is_set()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
