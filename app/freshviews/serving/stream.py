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

One Redis subscription serves every stream of the process (app/hub.py); each stream has a mailbox keeping the
latest value per key, so a slow client skips intermediate versions. Initial values come from the process's
memory where it holds them (app/nearcache.py), so a herd of reconnecting streams costs Redis nothing.

A client that does not read for ``sse_send_timeout`` seconds is dropped (counted in
``freshviews_serving_streams_dropped_total``); how soon that is noticed depends on the buffers towards the
client, which app/listen.py keeps small. Caps: ``sse_max_keys`` keys per stream (400), ``sse_max_streams``
streams per process (503) and optionally ``sse_max_streams_per_client`` per client address (429). Unknown
keys get 404 and invalid ones 422, before the stream starts.
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from contextvars import ContextVar
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from prometheus_client import Counter as MetricCounter
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from freshviews.core.views import InvalidKeyError, Registry, UnknownViewError
from freshviews.serving.hub import Mailbox, Snapshot
from freshviews.serving.runtime import CacheUnavailableError, StreamLimitError, error, get_serving

logger = logging.getLogger(__name__)

#: Set in the task of a stream dropped because its client stopped reading: ``freshviews serve`` silences uvicorn's
#: note about the unfinished response for those (:class:`freshviews.serving.listen.DroppedStreamFilter`).
STREAM_DROPPED: ContextVar[bool] = ContextVar("freshviews_stream_dropped", default=False)

STREAMS_DROPPED = MetricCounter(
    "freshviews_serving_streams_dropped_total",
    "SSE streams dropped because the client took nothing for the send timeout",
)

_EVENT_ID = re.compile(r"0|[1-9][0-9]{0,18}")
_LINES = re.compile(rb"\r\n|\r|\n")


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


_RECENT = RecentEvents(max_bytes=1 << 20)


def resume_point(last_event_id: str | None, grace_seconds: float) -> int | None:
    """The highest version a reconnecting client is known to hold for every key, or None (send everything)."""
    if last_event_id is None or not _EVENT_ID.fullmatch(last_event_id.strip()):
        return None
    return int(last_event_id.strip()) - int(grace_seconds * 1_000_000)


async def events(box: Mailbox, initial: Sequence[Snapshot | None], resume: int | None) -> AsyncIterator[bytes]:
    """The stream's body: the initial values, then whatever the hub puts in ``box``, each key's versions rising."""
    sent: dict[str, int] = {}
    for snapshot in sorted((s for s in initial if s is not None), key=lambda s: s.version):
        sent[snapshot.key] = snapshot.version
        if resume is None or snapshot.version > resume:
            yield _RECENT.encode(snapshot)
    while True:
        for snapshot in await box.take():
            # A resync after a reconnect delivers every key again: only what the client lacks goes out.
            if snapshot.version > sent.get(snapshot.key, -1):
                sent[snapshot.key] = snapshot.version
                yield _RECENT.encode(snapshot)


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


def stream_router(registry: Registry[Any]) -> APIRouter:
    """The ``/stream`` route; :func:`app.cache_routes.cache_router` includes it ahead of the key path."""
    router = APIRouter()

    @router.get(
        "/stream",
        summary="Cached views as Server-Sent Events: current values, then every update",
        response_class=EventSourceResponse,
        responses={400: {}, 404: {}, 422: {}, 429: {}, 503: {}},
    )
    async def stream(
        request: Request,
        key: Annotated[list[str], Query(min_length=1)],
        # No length limit here: a refused EventSource stops reconnecting, so a strange id is ignored instead.
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> Response:
        serving = get_serving(request)
        settings = serving.settings
        if len(key) > settings.sse_max_keys:
            return error(serving, 400, f"at most {settings.sse_max_keys} keys per stream, got {len(key)}")
        view_keys: list[str] = []
        for text in key:
            try:
                view_keys.append(registry.parse(text).key)
            except UnknownViewError as exc:
                return error(serving, 404, str(exc))
            except InvalidKeyError as exc:
                return error(serving, 422, str(exc))
        view_keys = list(dict.fromkeys(view_keys))
        client = request.client.host if request.client else "-"
        try:
            serving.streams.acquire(client)
        except StreamLimitError as exc:
            return error(serving, exc.status, exc.detail, retry=True)
        # Watch before reading the initial values, so that an update landing in between is not lost.
        box = serving.hub.open(view_keys)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                serving.hub.close(box)
                serving.streams.release(client)

        try:
            # From memory where this process holds the keys: a herd of reconnecting streams costs no Redis.
            initial = await serving.reads.current(view_keys)
        except CacheUnavailableError as exc:
            release()
            return error(serving, 503, str(exc), retry=True)
        except BaseException:
            release()
            raise
        for view_key, snapshot in zip(view_keys, initial, strict=True):
            if snapshot is None:
                serving.refresher.request(view_key)
        return StreamResponse(
            events(box, initial, resume_point(last_event_id, settings.sse_resume_grace)),
            client=client,
            on_close=release,
            ping=settings.sse_ping,
            send_timeout=settings.sse_send_timeout,
            sep="\n",
        )

    return router
