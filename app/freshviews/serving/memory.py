"""Values this process read recently, kept current by the update subscription, and the reads that fetch them.

Every cache write publishes ``"<version> <key>"``, and the hub (hub.py) holds the process's one subscription
to those notifications, so a copy in memory can be as fresh as Redis: it is dropped the moment a newer version
is announced, and the next read fetches the new value. That makes a read of a hot key cost no Redis round trip.
A key not held is read from Redis once however many readers want it at once (one :class:`Flights` per
process): a herd of readers of a key just written or evicted (hundreds of event streams reconnecting after a
deploy, polls) would otherwise send one read each, queue on the connection pool past the read deadline and
get 503s.

The rule everything here serves: a copy in memory is never older than Redis by more than the notification
delay. So:

- Copies are used only while the hub says the subscription is :attr:`~UpdateHub.live` (Redis answered on it
  within a second), so a link that silently died stops memory reads within that second. When the
  subscription is lost or remade, every copy is dropped and no read begun before is kept (notifications sent
  meanwhile are lost): reads go to Redis until memory fills again.
- A value read from Redis is kept only if no newer version was announced while the read was on its way (a
  slow read could otherwise park an old value in memory after its notification went by).
- A reader joins a read in flight only if no newer version was announced since that read began: at the
  announcement later readers start a read of their own, so a reader never gets a value older than one
  announced before it came. Joining needs no live subscription: a read in flight is at most one read deadline
  old, so what it may miss while announcements go unheard (a busy event loop answering pings late) is that
  recent, and a herd on a loaded process is when sharing matters most.
- Versions never go down here: a copy is replaced only by a snapshot with a higher fence.

The number of copies is bounded (least recently used first out). With a capacity of 0 nothing is kept or
shared: every read goes to Redis on its own, in the reader's task.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Sequence

from prometheus_client import Counter as MetricCounter

from freshviews.serving.flights import Flights
from freshviews.serving.hub import UpdateHub
from freshviews.serving.snapshots import Read, Snapshot

NEAR_CACHE_READS = MetricCounter("freshviews_near_cache_reads_total", "Reads served from process memory", ["outcome"])


class Memory:
    """The copies of values this process holds, and the shared reads from Redis that fill them."""

    def __init__(self, capacity: int, hub: UpdateHub, read: Read) -> None:
        """Kept current by ``hub`` (it registers here as the hub's listener); ``read`` fetches from Redis."""
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self._capacity = capacity
        self._hub = hub
        self._read = read
        self._copies: OrderedDict[str, Snapshot] = OrderedDict()
        self._reads: Flights[Snapshot | None] = Flights(self._fetch, name="freshviews-cache-read")
        #: Reads from Redis running per key, the newest version announced for each meanwhile, and which
        #: subscription this is (counted up whenever it is lost or remade).
        self._reading: Counter[str] = Counter()
        self._announced: dict[str, int] = {}
        self._subscription = 0
        hub.add_listener(self)

    @property
    def trusted(self) -> bool:
        """Whether copies may be used now: memory is on and announcements are being heard."""
        return self._capacity > 0 and self._hub.live

    def __len__(self) -> int:
        return len(self._copies)

    def get(self, view_key: str, *, count_miss: bool = True) -> Snapshot | None:
        """The copy of ``view_key``, if this process holds one and may use it now."""
        if not self.trusted:
            return None
        snapshot = self._copies.get(view_key)
        if snapshot is None:
            if count_miss:
                NEAR_CACHE_READS.labels("miss").inc()
            return None
        self._copies.move_to_end(view_key)
        NEAR_CACHE_READS.labels("hit").inc()
        return snapshot

    async def read(self, view_keys: Sequence[str], *, copies: bool = True) -> list[Snapshot | None]:
        """The current snapshot of each key (None: not cached): the copy where this process holds one (unless
        ``copies`` is false), else from Redis, one read per key however many readers wait on it.

        Raises what ``read`` raises (CacheUnavailableError); a reader that is cancelled leaves the read to the
        others.
        """
        wanted = list(dict.fromkeys(view_keys))
        found = {key: self.get(key) if copies else None for key in wanted}
        missing = [key for key in wanted if found[key] is None]
        if missing:
            if self._capacity == 0:
                snapshots = await self._read(missing)
            else:
                snapshots = [await flight.wait() for flight in self._reads.start(missing)]
            found.update(zip(missing, snapshots, strict=True))
        return [found[key] for key in view_keys]

    async def _fetch(self, view_keys: list[str]) -> list[Snapshot | None]:
        subscription = self._subscription
        self._reading.update(view_keys)
        try:
            snapshots = await self._read(view_keys)
            # Not kept if the subscription was lost or remade meanwhile (what it announced then is unknown),
            # nor if a newer version was announced while the read was on its way back.
            if subscription == self._subscription and self.trusted:
                for snapshot in snapshots:
                    if snapshot is not None and self._announced.get(snapshot.key, 0) <= snapshot.fence:
                        self._keep(snapshot)
            return snapshots
        finally:
            self._reading.subtract(view_keys)
            for key in view_keys:
                if self._reading[key] <= 0:
                    del self._reading[key]
                    self._announced.pop(key, None)

    def _keep(self, snapshot: Snapshot) -> None:
        current = self._copies.get(snapshot.key)
        if current is not None and current.fence > snapshot.fence:
            return
        self._copies[snapshot.key] = snapshot
        self._copies.move_to_end(snapshot.key)
        while len(self._copies) > self._capacity:
            self._copies.popitem(last=False)

    async def aclose(self) -> None:
        """Cancel the reads in flight (at shutdown); their readers see them cancelled."""
        await self._reads.aclose()

    # -- the hub's listener --------------------------------------------------------------------------------

    def announced(self, view_key: str, version: int) -> None:
        """A write of ``view_key`` at ``version`` was notified: drop an older copy, stop sharing the read in flight."""
        self._reads.forget(view_key)
        current = self._copies.get(view_key)
        if current is not None and current.fence < version:
            del self._copies[view_key]
        if view_key in self._reading:
            self._announced[view_key] = max(version, self._announced.get(view_key, 0))

    def subscribed(self) -> None:
        """Whatever happened while there was no subscription is unknown: start afresh."""
        self._forget_everything()

    def lost(self) -> None:
        self._forget_everything()

    def _forget_everything(self) -> None:
        self._subscription += 1
        self._copies.clear()
        self._reads.forget_all()
