"""Values this process served recently, kept current by the update hub: a hit costs no Redis round trip.

Every cache write publishes ``"<version> <key>"``, and the hub holds the process's one subscription to those
notifications, so a copy in memory can be as fresh as Redis: it is dropped the moment a newer version is
announced, and the next read fetches the new value. That makes ``GET /cache/{key}`` of a hot key nearly as
cheap as a route returning a constant.

Correctness rests on three rules:

- Memory is used only while the subscription is up and Redis answered on it within the last second (the hub
  pings a quiet channel), so a link that silently died stops memory reads within that second. When the
  subscription drops, everything is forgotten (notifications sent meanwhile are lost), and reads go to Redis
  until it is back.
- A value read from Redis is kept only if no newer version was announced while that read was in flight
  (otherwise a slow read could park an old value in memory after its notification went by).
- Versions never go down here either: an entry is replaced only by a snapshot with a higher fence.

The size is bounded (least recently used entries go first).

It also lists the reads of a key from Redis in flight that a new reader may share (app/reads.py): one that
began after the key's latest announcement. Unlike memory, this needs no trust in the subscription: a read in
flight is at most one read deadline old, so a write it might miss while announcements go unheard is that
recent (see app/reads.py).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable

from prometheus_client import Counter

from freshviews.serving.hub import Snapshot

NEAR_CACHE_READS = Counter("freshviews_near_cache_reads_total", "Reads served from process memory", ["outcome"])


class NearCache:
    def __init__(self, capacity: int, *, live: Callable[[], bool] = lambda: True) -> None:
        """``live()`` says whether announcements are being heard right now (the hub's recent-answer check)."""
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self._capacity = capacity
        self._heard = live
        self._entries: OrderedDict[str, Snapshot] = OrderedDict()
        #: Reads of a key from Redis in flight, and the newest version announced for it meanwhile.
        self._reading: dict[str, int] = {}
        self._announced: dict[str, int] = {}
        self._shared: dict[str, asyncio.Future[Snapshot | None]] = {}
        self._live = False

    @property
    def enabled(self) -> bool:
        return self._capacity > 0 and self._live and self._heard()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, view_key: str, *, count_miss: bool = True) -> Snapshot | None:
        if not self.enabled:
            return None
        snapshot = self._entries.get(view_key)
        if snapshot is None:
            if count_miss:
                NEAR_CACHE_READS.labels("miss").inc()
            return None
        self._entries.move_to_end(view_key)
        NEAR_CACHE_READS.labels("hit").inc()
        return snapshot

    def reading(self, view_key: str) -> None:
        """Call before reading ``view_key`` from Redis; pair with :meth:`offer` (or :meth:`abandon`)."""
        self._reading[view_key] = self._reading.get(view_key, 0) + 1

    def abandon(self, view_key: str) -> None:
        count = self._reading.get(view_key, 0) - 1
        if count > 0:
            self._reading[view_key] = count
        else:
            self._reading.pop(view_key, None)
            self._announced.pop(view_key, None)

    def offer(self, snapshot: Snapshot) -> None:
        """Keep ``snapshot``, just read from Redis, unless a newer version was announced during the read."""
        announced = self._announced.get(snapshot.key, 0)
        self.abandon(snapshot.key)
        if not self.enabled or announced > snapshot.fence:
            return
        self.put(snapshot)

    def put(self, snapshot: Snapshot) -> None:
        current = self._entries.get(snapshot.key)
        if current is not None and current.fence > snapshot.fence:
            return
        self._entries[snapshot.key] = snapshot
        self._entries.move_to_end(snapshot.key)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def joinable(self, view_key: str) -> asyncio.Future[Snapshot | None] | None:
        """A read of ``view_key`` from Redis in flight that began after its latest announcement, to share."""
        return self._shared.get(view_key) if self._capacity > 0 else None

    def share(self, view_key: str, result: asyncio.Future[Snapshot | None]) -> None:
        """``result`` will hold a read of ``view_key`` from Redis starting now; others may join it until it is
        done or a newer version is announced."""
        self._shared[view_key] = result

        def done(_: asyncio.Future[Snapshot | None]) -> None:
            if self._shared.get(view_key) is result:
                del self._shared[view_key]

        result.add_done_callback(done)

    def announced(self, view_key: str, version: int) -> None:
        """A write of ``view_key`` at ``version`` was notified: drop an older copy, remember it for reads in flight."""
        # A read in flight may have reached Redis before this write: later readers start their own.
        self._shared.pop(view_key, None)
        current = self._entries.get(view_key)
        if current is not None and current.fence < version:
            del self._entries[view_key]
        if view_key in self._reading:
            self._announced[view_key] = max(version, self._announced.get(view_key, 0))

    def connected(self) -> None:
        """The subscription is (re)made: whatever happened while it was down is unknown, so start empty."""
        self._entries.clear()
        self._shared.clear()
        self._live = True

    def disconnected(self) -> None:
        self._live = False
        self._entries.clear()
        self._shared.clear()
