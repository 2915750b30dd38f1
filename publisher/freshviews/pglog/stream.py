"""The replication connection, in a thread of its own: psycopg2's replication protocol is synchronous.

:class:`ReplicationStream` reads the slot with psycopg2's ``LogicalReplicationConnection`` (``pgoutput``,
``proto_version`` 1, the publication), feeds the messages to a :class:`~freshviews.pglog.decoding.Decoder` and
hands each complete transaction to the event loop through a bounded queue: when the loop falls behind (Redis
away), the thread waits and the slot keeps the rest. The loop tells it, with :meth:`confirm`, how far the changes
are in the change log; only then does the thread report that position to the server (``send_feedback``), so the
slot never moves past a change that is not in the log. Idle and caught up, it confirms the server's position, so
that WAL from tables nobody watches is not held.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import select
import threading

import psycopg2
import psycopg2.extras

from freshviews.pglog.decoding import Decoder, Transaction

logger = logging.getLogger(__name__)

#: Longest wait for a message before the thread looks at its stop flag and its confirmations, seconds.
POLL_SECONDS = 0.05
#: Seconds between reports of the confirmed position to the server.
STATUS_INTERVAL = 1
#: Transactions decoded ahead of the change log.
QUEUE_SIZE = 64

Item = Transaction | BaseException


class ReplicationStream:
    """One replication session on ``slot``; its transactions (or the error that ended it) go to :attr:`queue`."""

    def __init__(self, url: str, *, slot: str, publication: str, decoder: Decoder) -> None:
        self._url = url
        self._slot = slot
        self._publication = publication
        self._decoder = decoder
        self.queue: asyncio.Queue[Item] = asyncio.Queue(QUEUE_SIZE)
        self._loop = asyncio.get_running_loop()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._confirmed = 0
        self._sent = 0
        self._received = 0
        self._thread = threading.Thread(target=self._run, name=f"pglog-{slot}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def confirm(self, lsn: int) -> None:
        """Every change up to ``lsn`` is in the change log: the slot may move there (thread-safe)."""
        with self._lock:
            self._confirmed = max(self._confirmed, lsn)

    def stop(self) -> None:
        self._stop.set()

    async def join(self) -> None:
        self.stop()
        await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        try:
            self._stream()
        except BaseException as exc:
            self._hand(exc)

    def _stream(self) -> None:
        conn = psycopg2.connect(
            self._url, connection_factory=psycopg2.extras.LogicalReplicationConnection, connect_timeout=5
        )
        try:
            cur = conn.cursor()
            cur.start_replication(
                slot_name=self._slot,
                decode=False,
                options={"proto_version": "1", "publication_names": self._publication},
                # psycopg2 sends the position given to send_feedback at this interval: the most a restart
                # replays, and how stale the slot's confirmed position (its lag) may look.
                status_interval=STATUS_INTERVAL,
            )
            logger.info("reading slot %s (publication %s)", self._slot, self._publication)
            while not self._stop.is_set():
                message = cur.read_message()
                if message is not None:
                    done = self._decoder.feed(message.payload)
                    if done is not None:
                        self._received = done.end_lsn
                        if not self._hand(done):
                            return
                        self._feedback(cur)  # under a steady stream the read never comes back empty
                    continue
                self._feedback(cur)
                select.select([conn], [], [], POLL_SECONDS)
            self._feedback(cur)
        finally:
            conn.close()

    def _feedback(self, cur: psycopg2.extras.ReplicationCursor) -> None:
        with self._lock:
            confirmed = self._confirmed
        if confirmed >= self._received and not self._decoder.in_transaction:
            # Everything read so far is in the log: the server's position is safe to confirm (it is at or before
            # the next transaction it will send), and holding it would keep WAL of unwatched tables.
            confirmed = max(confirmed, cur.wal_end)
        if confirmed > self._sent:
            cur.send_feedback(flush_lsn=confirmed, reply=False)  # type: ignore[no-untyped-call]
            self._sent = confirmed

    def _hand(self, item: Item) -> bool:
        """Put ``item`` on the loop's queue, waiting while it is full; False when stopped meanwhile."""
        try:
            future = asyncio.run_coroutine_threadsafe(self.queue.put(item), self._loop)
        except RuntimeError:
            return False  # the loop is closed
        while True:
            try:
                future.result(timeout=0.5)
                return True
            except concurrent.futures.TimeoutError:
                if self._stop.is_set():
                    future.cancel()
                    return False
