"""The app's listening socket: uvicorn's own, with two options every connection it accepts inherits.

Why: SSE streams are long-lived, and a client may stop reading without closing (a frozen tab, a stalled
proxy). Its stream is dropped when a send to it stalls for ``sse_send_timeout`` (app/stream.py), but two
things stand between that rule and the client:

- A send stalls only once everything between the app and the client is full: the client's receive window, the
  kernel's send buffer and the event loop's 64 KiB write buffer. Left to Linux, the send buffer autotunes up
  to ``net.ipv4.tcp_wmem``'s maximum (4 MiB by default), so such a client could hold megabytes and go unnoticed
  for a long time. ``socket_send_buffer`` (SO_SNDBUF, which the kernel doubles) makes a client that stopped
  reading stall as soon as about that much is queued to it: its first large update does it.
- Dropping the stream does not free the socket: the event loop closes a socket only once its write buffer has
  drained, and towards a client that does not read it never does. TCP_USER_TIMEOUT of ``sse_send_timeout``
  has the kernel reset a connection whose data stays unacknowledged, or whose receive window stays shut, that
  long; the event loop then closes the socket at once. A dead peer (half-open link) is found the same way.

Accepted sockets inherit both options from the listening socket on Linux, so setting them here covers every
connection, in every worker process sharing the socket. SO_SNDBUF turns off the kernel's autotuning of those
sockets: responses here are small, and twice 64 KiB in flight per connection is ample on the links an app server
sits on (loopback, or a LAN behind the proxy). TCP_USER_TIMEOUT is Linux's; elsewhere only the buffer is set.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import socket
from typing import Any

import uvicorn
import uvicorn.config
from uvicorn.supervisors import Multiprocess

from freshviews.core.logs import LOG_FORMAT
from freshviews.serving.settings import ServingSettings
from freshviews.serving.stream import STREAM_DROPPED


class DroppedStreamFilter(logging.Filter):
    """Silences uvicorn's "ASGI callable returned without completing response." for a stream dropped on
    purpose: the drop is counted and logged already, and an ERROR per frozen client would read as a fault.
    uvicorn logs it in the request's own task, after the app returned, so the context variable still says."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (STREAM_DROPPED.get() and record.getMessage().startswith("ASGI callable returned without"))


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, the root logger with every line's time, level and logger, and the filter of dropped
    streams; uvicorn applies it in every worker process (without it, workers would log nothing below WARNING of
    the app's own)."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["formatters"]["plain"] = {"format": LOG_FORMAT}
    config["handlers"]["plain"] = {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}
    config["root"] = {"handlers": ["plain"], "level": level.upper()}
    config.setdefault("filters", {})["dropped_streams"] = {"()": DroppedStreamFilter}
    config["loggers"]["uvicorn.error"]["filters"] = ["dropped_streams"]
    return config


def listening_socket(config: uvicorn.Config, settings: ServingSettings) -> socket.socket:
    """Bind the socket ``config`` describes (host and port, a Unix socket or an inherited fd), as uvicorn
    would, with ``settings.socket_send_buffer`` (if not 0) and the send timeout as the kernel's user timeout."""
    sock = config.bind_socket()
    if settings.socket_send_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, settings.socket_send_buffer)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        # Not by sock.family: uvicorn wraps an inherited fd as AF_UNIX whatever it is. A Unix socket refuses it.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, round(settings.sse_send_timeout * 1000))
    return sock


def serve(config: uvicorn.Config, settings: ServingSettings) -> bool:
    """Run uvicorn on :func:`listening_socket` as ``uvicorn.run`` would (without reload): in this process, or
    in ``config.workers`` worker processes sharing the socket, ``config.app`` then being an import string.
    Returns when the server stops (Ctrl-C included): False if it never started (in a single process)."""
    if config.workers > 1 and not isinstance(config.app, str):
        raise ValueError(
            "worker processes need the app as an import string, such as 'freshviews.scoreboard.main:create_app'"
        )
    sock = listening_socket(config, settings)
    server = uvicorn.Server(config)
    try:
        if config.workers > 1:
            Multiprocess(config, sockets=[sock]).run()
            return True
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        if config.uds and os.path.exists(config.uds):
            os.remove(config.uds)
    return server.started
