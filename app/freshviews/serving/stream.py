"""``GET /cache/stream?key=a&key=b``: cached views pushed to browsers as Server-Sent Events (sse-starlette).

On connect the stream sends the current value of every requested key that is cached (oldest version
first; a deleted key as a ``delete`` event), then every update as it is written. The event contract
(dashboards and proxy tests build on it)::

    event: update
    id: <version>
    data: {"key": "<view key>", "version": <int>, "data": <the stored JSON value, raw>}

    event: delete
    id: <version>
    data: {"key": "<view key>", "version": <int>}

Lines end with ``\\n``; heartbeats are comment lines (``: ping ...``) every ``sse_ping`` seconds. A key not
cached yet is requested from the subscribers and arrives as an ``update`` when computed.

``Last-Event-ID`` (sent by a reconnecting EventSource): ids are per-key versions, which are microseconds of
the Redis clock at the start of the recompute that wrote them, so one id says something about every key: a
key whose current version is below it was written before that event's recompute started. On reconnect with
``Last-Event-ID: L`` a key is *not* resent when its version is at most ``L - sse_resume_grace``; all others
are. The margin is there because events do not arrive in version order across keys: a recompute that started
earlier but took longer lands after a newer one, so a client may hold ``L`` without having received a key
whose version is a little below ``L``. Any recompute that lands within ``sse_resume_grace`` seconds of its
start is covered; resending a value the client has is harmless. A Last-Event-ID that is not an integer is
ignored (everything is resent) rather than refused, since a refused EventSource stops reconnecting.

One Redis subscription serves every stream of the process (hub.py); each stream has a mailbox keeping the
latest value per key, so a slow client skips intermediate versions. Initial values come from the process's
memory where it holds them, else from one shared Redis read per key (memory.py): a herd of reconnecting
streams costs Redis little or nothing.

A client that does not read for ``sse_send_timeout`` seconds is dropped (counted in
``freshviews_serving_streams_dropped_total``); how soon that is noticed depends on the buffers towards the
client, which listen.py keeps small. Caps: ``sse_max_keys`` keys per stream (400), ``sse_max_streams``
streams per process (503) and optionally ``sse_max_streams_per_client`` per client address (429). Unknown
keys get 404 and invalid ones 422, before the stream starts (routes.py).

:class:`Streams` is the streams' part of the runtime: the caps, the encodings the streams share, and how a
stream opens; the route that parses its keys is in routes.py.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from contextvars import ContextVar
from typing import Any

from prometheus_client import Counter as MetricCounter
from prometheus_client import Gauge
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from freshviews.serving.hub import Mailbox, UpdateHub
from freshviews.serving.settings import ServingSettings
from freshviews.serving.snapshots import Read, Snapshot

logger = logging.getLogger(__name__)

#: Set in the task of a stream dropped because its client stopped reading: ``freshviews serve`` silences uvicorn's
#: note about the unfinished response for those (:class:`freshviews.serving.listen.DroppedStreamFilter`).
STREAM_DROPPED: ContextVar[bool] = ContextVar("freshviews_stream_dropped", default=False)

#: Bytes of encoded events kept for the streams of a process to share (:class:`RecentEvents`).
RECENT_EVENTS_BYTES = 1 << 20

STREAMS_OPEN = Gauge("freshviews_serving_streams_open", "SSE streams open in this process")
STREAMS_REFUSED = MetricCounter("freshviews_serving_streams_refused_total", "SSE streams refused by a cap", ["status"])
STREAMS_DROPPED = MetricCounter(
    "freshviews_serving_streams_dropped_total",
    "SSE streams dropped because the client took nothing for the send timeout",
)

_EVENT_ID = re.compile(r"0|[1-9][0-9]{0,18}")
_LINES = re.compile(rb"\r\n|\r|\n")


class StreamLimitError(RuntimeError):
    """No room for another SSE stream: ``status`` is 503 (the process is full) or 429 (this client is)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def encode_event(snapshot: Snapshot) -> bytes:
    """The SSE bytes of one snapshot; the stored value is embedded as it is, not re-encoded."""
    key = json.dumps(snapshot.key).encode()
    if snapshot.data is None:
        return b'event: delete\nid: %d\ndata: {"key": %b, "version": %d}\n\n' % (
            snapshot.version,
            key,
            snapshot.version,
        )
    payload = b'{"key": %b, "version": %d, "data": %b}' % (key, snapshot.version, snapshot.data)
    # Compact JSON has no line breaks; a stored value with some (pretty-printed) is split over several data
    # lines, which the client joins back with "\n": the same JSON.
    data = b"".join(b"data: " + line + b"\n" for line in _LINES.split(payload))
    return b"event: update\nid: %d\n%b\n" % (snapshot.version, data)


class RecentEvents:
    """The SSE bytes of recent snapshots, kept up to ``max_bytes`` in all (least recently used go first).

    The hub hands the same snapshot to every stream watching its key, and each would encode it again: about
    2 ms for a 200 kB value, times every stream. A snapshot is taken by its streams within moments, so a small
    byte budget serves them all; a bound in bytes rather than entries keeps big values from piling up here.
    """

    def __init__(self, max_bytes: int) -> None:
        self._entries: OrderedDict[Snapshot, bytes] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes

    def encode(self, snapshot: Snapshot) -> bytes:
        encoded = self._entries.get(snapshot)
        if encoded is not None:
            self._entries.move_to_end(snapshot)
            return encoded
        encoded = self._entries[snapshot] = encode_event(snapshot)
        self._bytes += len(encoded)
        while self._bytes > self._max_bytes and len(self._entries) > 1:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= len(dropped)
        return encoded


def resume_point(last_event_id: str | None, grace_seconds: float) -> int | None:
    """The highest version a reconnecting client is known to hold for every key, or None (send everything)."""
    if last_event_id is None or not _EVENT_ID.fullmatch(last_event_id.strip()):
        return None
    return int(last_event_id.strip()) - int(grace_seconds * 1_000_000)


class Streams:
    """The SSE streams of one process: how many are open (in total and per client address), the encodings of
    recent snapshots they share, and how one opens.

    The client address is ``request.client.host``: behind a proxy, let uvicorn trust its X-Forwarded-For (with
    ``FORWARDED_ALLOW_IPS``) so that it is the real client's.
    """

    def __init__(self, hub: UpdateHub, read: Read, settings: ServingSettings) -> None:
        """``read`` gives the initial values, and asks for those not cached without waiting (Serving's)."""
        self._hub = hub
        self._read = read
        self._settings = settings
        self._by_client: Counter[str] = Counter()
        self._recent = RecentEvents(RECENT_EVENTS_BYTES)
        #: Streams open now.
        self.open = 0

    async def respond(self, view_keys: Sequence[str], *, client: str, last_event_id: str | None) -> StreamResponse:
        """The stream of ``view_keys`` (validated, distinct) for ``client``. Raises StreamLimitError when a cap is
        reached, CacheUnavailableError when the initial values cannot be read; nothing is held then."""
        self._acquire(client)
        # Watch before reading the initial values, so that an update landing in between is not lost.
        box = self._hub.open(view_keys)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._hub.close(box)
                self._release(client)

        try:
            initial = await self._read(view_keys)
        except BaseException:
            release()
            raise
        settings = self._settings
        return StreamResponse(
            self._events(box, initial, resume_point(last_event_id, settings.sse_resume_grace)),
            client=client,
            on_close=release,
            ping=settings.sse_ping,
            send_timeout=settings.sse_send_timeout,
            sep="\n",
        )

    async def _events(
        self, box: Mailbox, initial: Sequence[Snapshot | None], resume: int | None
    ) -> AsyncIterator[bytes]:
        """The stream's body: the initial values, then whatever the hub puts in ``box``, each key's versions rising."""
        sent: dict[str, int] = {}
        for snapshot in sorted((s for s in initial if s is not None), key=lambda s: s.version):
            sent[snapshot.key] = snapshot.version
            if resume is None or snapshot.version > resume:
                yield self._recent.encode(snapshot)
        while True:
            for snapshot in await box.take():
                # A resync after a reconnect delivers every key again: only what the client lacks goes out.
                if snapshot.version > sent.get(snapshot.key, -1):
                    sent[snapshot.key] = snapshot.version
                    yield self._recent.encode(snapshot)

    def _acquire(self, client: str) -> None:
        total, per_client = self._settings.sse_max_streams, self._settings.sse_max_streams_per_client
        if self.open >= total:
            STREAMS_REFUSED.labels("503").inc()
            raise StreamLimitError(503, f"this server holds its maximum of {total} streams")
        if per_client and self._by_client[client] >= per_client:
            STREAMS_REFUSED.labels("429").inc()
            raise StreamLimitError(429, f"at most {per_client} streams per client")
        self.open += 1
        self._by_client[client] += 1
        STREAMS_OPEN.inc()

    def _release(self, client: str) -> None:
        self.open -= 1
        STREAMS_OPEN.dec()
        self._by_client[client] -= 1
        if self._by_client[client] <= 0:
            del self._by_client[client]


class StreamResponse(EventSourceResponse):
    """An EventSourceResponse that runs ``on_close`` however the response ends, even if the body never started
    (the client left first): the stream's mailbox and slot are released exactly once. A client that stopped
    reading is dropped as a matter of course: counted and logged, not raised into the server as a failure."""

    def __init__(
        self, content: AsyncIterator[bytes], *, client: str, on_close: Callable[[], None], **kwargs: Any
    ) -> None:
        super().__init__(content, **kwargs)
        self._client = client
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except* SendTimeoutError:  # a group when the ping and an event timed out together
            # The response stays unfinished: uvicorn closes the connection (its note that the response was
            # unfinished is silenced by listen.DroppedStreamFilter), and the kernel resets it once the send
            # timeout passes again with nothing taken (listen.py), which frees the socket.
            STREAM_DROPPED.set(True)
            STREAMS_DROPPED.inc()
            logger.info("dropped the stream of %s: it took nothing for %ss", self._client, self.send_timeout)
        finally:
            self._on_close()
