"""One Redis subscription per app process, fanned out to in-process mailboxes (SSE clients, waiting readers).

The subscriber PUBLISHes ``"<version> <view key>"`` on the update channel after every cache write. The hub
holds the process's only subscription to that channel; for each notified key somebody watches, it reads the
stored value once (one pipeline per batch of notifications) and puts it in every watcher's :class:`Mailbox`.
A mailbox keeps only the latest snapshot per key, so a slow reader skips intermediate versions and its memory
is bounded by the number of keys it watches, whatever the update rate.

Pub/sub is not durable: notifications sent while the subscription is down are lost. So every (re)subscription
is followed by a resync that reads the current value of every watched key and delivers it as an update;
readers drop versions they already have.

The hub is the one judge of whether announcements are being heard: :attr:`UpdateHub.live` (subscribed, and
Redis answered on the subscription within :data:`LIVE_WINDOW`; a quiet channel is pinged twice per window).
A :class:`Listener` (the process's memory, memory.py) is told of every announcement and of every change of
subscription. :meth:`UpdateHub.health` says why the subscription is down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from prometheus_client import Counter
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from freshviews.core.clients import RedisClient, is_cluster
from freshviews.core.keys import Keys
from freshviews.serving.snapshots import Snapshot, read_snapshots

logger = logging.getLogger(__name__)

#: The subscription is live while Redis answered on it within this many seconds: a link that silently died
#: stops counting as live within that time.
LIVE_WINDOW = 1.0
#: Seconds between pings on a quiet subscription: twice per window, so a quiet healthy link stays live.
PING_EVERY = LIVE_WINDOW / 2
#: Notifications handled in one go: their keys are read back in one pipeline.
MAX_NOTIFICATIONS_PER_READ = 1000
#: Keys per pipeline when reading back values (a resync may cover every key watched in the process).
READ_CHUNK = 500

HUB_RECONNECTS = Counter("freshviews_serving_hub_reconnects_total", "Times the update subscription was (re)made")
HUB_ERRORS = Counter("freshviews_serving_hub_errors_total", "Times the update subscription failed", ["kind"])


class Listener(Protocol):
    """What the hub tells about the subscription, as it happens (called in the hub's task, never awaited)."""

    def announced(self, view_key: str, version: int) -> None:
        """A write of ``view_key`` at ``version`` was notified."""

    def subscribed(self) -> None:
        """The subscription is (re)made: notifications sent before it may have been lost."""

    def lost(self) -> None:
        """The subscription is down: notifications are not heard until :meth:`subscribed`."""


class Mailbox:
    """The latest snapshot per watched key not yet taken by its reader."""

    def __init__(self, view_keys: frozenset[str]) -> None:
        self.keys = view_keys
        self._latest: dict[str, Snapshot] = {}
        self._ready = asyncio.Event()

    def put(self, snapshot: Snapshot) -> None:
        current = self._latest.get(snapshot.key)
        if current is None or snapshot.fence >= current.fence:
            self._latest[snapshot.key] = snapshot
            self._ready.set()

    async def take(self) -> list[Snapshot]:
        """Wait for at least one snapshot and return all pending ones, oldest version first."""
        await self._ready.wait()
        self._ready.clear()
        latest, self._latest = self._latest, {}
        return sorted(latest.values(), key=lambda s: s.version)

    def __len__(self) -> int:
        return len(self._latest)


class UpdateHub:
    """The process's one subscription to the update channel; run :meth:`run` as a supervised task."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        *,
        read_timeout: float,
        backoff_max: float = 5.0,
    ) -> None:
        if read_timeout <= 0 or backoff_max <= 0:
            raise ValueError("read_timeout and backoff_max must be > 0")
        self._listeners: list[Listener] = []
        self._redis = redis
        self._keys = keys
        self._read_timeout = read_timeout
        self._backoff_max = backoff_max
        self._watchers: dict[str, set[Mailbox]] = {}
        self._mailboxes: set[Mailbox] = set()
        self._connected = asyncio.Event()
        self._closed = False
        self._heard = time.monotonic()
        self._down_since: float | None = time.monotonic()
        self._last_error = "not connected yet"
        self._subscriptions = 0

    def add_listener(self, listener: Listener) -> None:
        """Tell ``listener`` of every announcement and change of subscription from now on."""
        self._listeners.append(listener)

    # -- watching ------------------------------------------------------------------------------------------

    def open(self, view_keys: Iterable[str]) -> Mailbox:
        """Register a mailbox for ``view_keys`` (validated keys); pair with :meth:`close`."""
        box = Mailbox(frozenset(view_keys))
        self._mailboxes.add(box)
        for key in box.keys:
            self._watchers.setdefault(key, set()).add(box)
        return box

    def close(self, box: Mailbox) -> None:
        """Unregister ``box``; safe to call twice."""
        if box not in self._mailboxes:
            return
        self._mailboxes.discard(box)
        for key in box.keys:
            watchers = self._watchers.get(key)
            if watchers is not None:
                watchers.discard(box)
                if not watchers:
                    del self._watchers[key]

    @contextmanager
    def watch(self, view_keys: Iterable[str]) -> Iterator[Mailbox]:
        box = self.open(view_keys)
        try:
            yield box
        finally:
            self.close(box)

    @property
    def mailboxes(self) -> int:
        return len(self._mailboxes)

    @property
    def watched_keys(self) -> int:
        return len(self._watchers)

    @property
    def largest_mailbox(self) -> int:
        """Snapshots waiting in the fullest mailbox: bounded by its keys, however slow its reader."""
        return max((len(box) for box in self._mailboxes), default=0)

    # -- state ---------------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def live(self) -> bool:
        """Whether announcements are being heard now: subscribed, and Redis answered within LIVE_WINDOW."""
        return self._connected.is_set() and time.monotonic() - self._heard < LIVE_WINDOW

    def health(self) -> str:
        """``ok``, or why the subscription is down and for how long (for /healthz)."""
        if self._connected.is_set() or self._down_since is None:
            return "ok"
        down_for = time.monotonic() - self._down_since
        return f"error: update subscription down for {down_for:.1f}s: {self._last_error}"[:300]

    async def wait_connected(self, timeout: float) -> bool:  # noqa: ASYNC109 (a bool answer, not an error)
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    def _mark_down(self, reason: str) -> None:
        if self._connected.is_set():
            self._down_since = time.monotonic()
        self._connected.clear()
        self._last_error = reason
        for listener in self._listeners:
            listener.lost()

    # -- the subscription ----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Make :meth:`run` return at its next step (besides cancelling it: a Redis client retrying a command
        can swallow a cancellation, and a shutdown must not depend on that)."""
        self._closed = True

    async def run(self) -> None:
        """Subscribe and dispatch until cancelled or closed; every failure is logged and retried with backoff."""
        delay = 0.1
        while not self._closed:
            subscriptions = self._subscriptions
            try:
                await self._listen()
            except (RedisError, RedisClusterException, OSError) as exc:
                HUB_ERRORS.labels("redis").inc()
                self._mark_down(f"{type(exc).__name__}: {exc}")
                logger.warning("update subscription lost (%s: %s); retrying in %.1fs", type(exc).__name__, exc, delay)
            except Exception as exc:
                # A bug here must not leave every stream of the process silent: log it loudly and resubscribe.
                HUB_ERRORS.labels("bug").inc()
                self._mark_down(f"{type(exc).__name__}: {exc}")
                logger.exception("update hub crashed; restarting it in %.1fs", delay)
            if self._subscriptions > subscriptions:
                delay = 0.1  # it was up for a while: a new outage starts with a short wait again
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff_max)

    async def _listen(self) -> None:
        if is_cluster(self._redis):
            # A cluster client learns the slots on its first command, and learns of a failover only when a command
            # fails; its pub/sub needs the map and never refreshes it. So one keyed command in the channel's slot
            # first (nothing is named like the channel): it fails over to the slot's new master with the map
            # refreshed, and the subscription follows it there instead of retrying a dead node for ever.
            await self._redis.initialize()
            await self._redis.exists(self._keys.updates_channel)
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self._keys.updates_channel)
            # The confirmation is due within the silence allowed from now, whatever was heard before the outage
            # (else a subscription made after a long one would be given up before its confirmation is read).
            pinged = self._heard = time.monotonic()
            while not self._closed:
                # A quiet channel and a dead link look the same from here: ping, and expect to hear back.
                now = time.monotonic()
                if now - self._heard > PING_EVERY * 3 + self._read_timeout:
                    raise RedisConnectionError(f"no answer on the update subscription for {now - self._heard:.1f}s")
                if now - pinged >= PING_EVERY:
                    await pubsub.ping()
                    pinged = now
                message = await pubsub.get_message(timeout=PING_EVERY)
                if message is None:
                    continue
                self._heard = time.monotonic()
                messages = [message]
                while len(messages) < MAX_NOTIFICATIONS_PER_READ:
                    more = await pubsub.get_message(timeout=0)
                    if more is None:
                        break
                    messages.append(more)
                await self._handle(messages)
        finally:
            self._mark_down("resubscribing")
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves PubSub.aclose unannotated

    async def _handle(self, messages: list[dict[str, Any]]) -> None:
        notified: set[str] = set()
        resync = False
        for message in messages:
            if message["type"] == "subscribe":
                # Also seen when redis-py reconnects and resubscribes by itself: anything published meanwhile
                # was lost, so every watched key is read again.
                resync = True
                self._connected.set()
                self._down_since = None
                self._subscriptions += 1
                HUB_RECONNECTS.inc()
                for listener in self._listeners:
                    listener.subscribed()
            elif message["type"] == "message":
                version, _, raw_key = bytes(message["data"]).partition(b" ")
                key = raw_key.decode(errors="replace")
                notified.add(key)
                if version.isdigit():
                    for listener in self._listeners:
                        listener.announced(key, int(version))
        wanted = set(self._watchers) if resync else notified & self._watchers.keys()
        await self._deliver(sorted(wanted))

    async def _deliver(self, view_keys: list[str]) -> None:
        for start in range(0, len(view_keys), READ_CHUNK):
            chunk = view_keys[start : start + READ_CHUNK]
            async with asyncio.timeout(self._read_timeout):
                snapshots = await read_snapshots(self._redis, self._keys, chunk)
            for snapshot in snapshots:
                if snapshot is None:
                    continue
                for box in self._watchers.get(snapshot.key, ()):
                    box.put(snapshot)
