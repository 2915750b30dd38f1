"""uvicorn's httptools protocol with deadlines on reading a request, and a cap on the size of its head.

uvicorn puts no deadline on reading a request: a client that opens a connection and sends nothing, trickles its
head a byte at a time (slowloris) or sends half a body holds a connection, its buffers and, for a body, an app
task for as long as it likes; and a head of any size is buffered and accepted. ``freshviews serve`` runs this
protocol instead (``http=`` of ``uvicorn.Config``):

- the head (request line and headers) must arrive within ``request_head_timeout`` of the connection opening, or
  of the first byte of a later request on it (an idle keep-alive connection is uvicorn's ``timeout_keep_alive``);
- the body within ``request_body_timeout`` of the head's end;
- a head over ``request_head_max_bytes`` is answered 431 and the connection closed, as soon as that many bytes
  arrived without the head ending: nothing larger is ever buffered. (An If-None-Match too long or naming too
  many tags, within that, is ignored by the read routes: answers.py.)

A request that misses a deadline is answered 408 if no response has begun, and its connection closed; the app,
if it was reading the body, sees the client disconnect.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from freshviews.serving.settings import ServingSettings

#: How long a refused connection is kept open, discarding what the client still sends, seconds.
LINGER = 1.0


@dataclass(frozen=True, slots=True)
class RequestLimits:
    head_timeout: float
    body_timeout: float
    head_max_bytes: int

    @classmethod
    def of(cls, settings: ServingSettings) -> RequestLimits:
        return cls(settings.request_head_timeout, settings.request_body_timeout, settings.request_head_max_bytes)


def _plain(status: bytes, reason: str) -> bytes:
    body = reason.encode()
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\nconnection: close\r\n\r\n"
        + body
    )  # fmt: skip


class DeadlineProtocol(HttpToolsProtocol):
    """One connection; ``limits`` as above (see :func:`deadline_protocol` for the factory uvicorn calls)."""

    def __init__(self, *args: Any, limits: RequestLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits
        self._timer: asyncio.TimerHandle | None = None
        #: What is being read: a request's "head", its "body", or nothing ("idle": between requests).
        self._phase = "idle"
        #: Bytes of the head read so far.
        self._head_bytes = 0
        self._refused = False

    # -- the deadlines ------------------------------------------------------------------------------------------

    def _arm(self, seconds: float, why: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expired, why)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, why: str) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        self.logger.info("closing a connection whose %s did not arrive in time", why)
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(_plain(b"408 Request Timeout", f"the request's {why} did not arrive in time"))
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._begin_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _begin_head(self) -> None:
        self._phase, self._head_bytes = "head", 0
        self._arm(self._limits.head_timeout, "head")

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        in_head = self._phase == "head"
        super().data_received(data)
        if in_head and self._phase == "head" and not self._refused:
            # Still in the head after this chunk: every byte of it counts (the body has not begun).
            self._head_bytes += len(data)
            if self._head_bytes > self._limits.head_max_bytes:
                self._refuse()

    def _refuse(self) -> None:
        self._refused = True
        self._disarm()
        if self.transport.is_closing():
            return
        limit = self._limits.head_max_bytes
        self.transport.write(_plain(b"431 Request Header Fields Too Large", f"request head over {limit} bytes"))
        # Closing at once, with the rest of the head unread, would reset the connection and the client might
        # never read the 431: end our side, drop what still comes, and close once the client has had a moment.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._timer = self.loop.call_later(LINGER, self.transport.close)

    # -- parser callbacks ---------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        # The first byte of a later request on this connection (keep-alive, pipelining): its own deadline.
        if self._phase == "idle":
            self._begin_head()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        # The exact size of the head (a chunk that ended it may also hold part of the body).
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        self._phase = "body"
        if size > self._limits.head_max_bytes:
            self._refuse()
            return
        self._arm(self._limits.body_timeout, "body")
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._phase = "idle"
        self._disarm()
        super().on_message_complete()


def deadline_protocol(settings: ServingSettings) -> Any:
    """What ``uvicorn.Config(http=...)`` takes: a factory of :class:`DeadlineProtocol` with ``settings``' limits
    (a partial, so that worker processes, which get the config pickled, can rebuild it)."""
    return functools.partial(DeadlineProtocol, limits=RequestLimits.of(settings))
