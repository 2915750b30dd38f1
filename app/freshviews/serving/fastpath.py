"""An ASGI middleware that answers ``GET /cache/{key}`` from process memory before any routing happens.

For a hot key the value is already in this process (:mod:`app.nearcache`, kept current by the update
subscription), so what is left of a request is the framework: route matching over every route of the app,
parameter validation, response objects. This middleware skips all of it for the one case that dominates a
polled backend (a plain GET of a cached key, no query string) and answers exactly what the route would: the
same bytes, ETag, Cache-Control and 304. Anything else (a miss, a bad key, ``min_version``, other paths)
goes on to the app unchanged, so the routes stay the one definition of behaviour.

Mount it after the app has a :class:`~app.serving.Serving` in its lifespan state::

    app.add_middleware(FastReads, registry=registry, prefix="/cache")
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter
from starlette.types import ASGIApp, Receive, Scope, Send

from freshviews.core.views import InvalidKeyError, Registry, UnknownViewError
from freshviews.serving.routes import RESERVED_NAMES, cache_control_of, etag_matches, etag_of
from freshviews.serving.runtime import Serving

FAST_READS = Counter("freshviews_fast_reads_total", "Cache reads answered from memory before routing", ["status"])


class FastReads:
    def __init__(self, app: ASGIApp, *, registry: Registry[Any], prefix: str = "/cache") -> None:
        self._app = app
        self._registry = registry
        self._prefix = prefix.rstrip("/") + "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and not scope["query_string"]:
            path: str = scope["path"]
            if path.startswith(self._prefix) and await self._answered(scope, path, send):
                return
        await self._app(scope, receive, send)

    async def _answered(self, scope: Scope, path: str, send: Send) -> bool:
        serving = scope.get("state", {}).get("serving")
        if not isinstance(serving, Serving):
            return False
        text = path[len(self._prefix) :]  # ASGI paths arrive percent-decoded already
        if text.split("/", 1)[0] in RESERVED_NAMES:
            return False
        try:
            parsed = self._registry.parse(text)
        except (UnknownViewError, InvalidKeyError):
            return False  # the route gives the 404/422 with its reason
        snapshot = serving.near.get(parsed.key, count_miss=False)  # the route counts the miss it then serves
        if snapshot is None or snapshot.data is None:
            return False
        etag = etag_of(snapshot.version).encode()
        headers = [(b"etag", etag), (b"cache-control", cache_control_of(parsed.view).encode())]
        if_none_match = next((v for k, v in scope["headers"] if k == b"if-none-match"), None)
        if if_none_match is not None and etag_matches(if_none_match.decode("latin-1"), etag.decode()):
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            FAST_READS.labels("304").inc()
            return True
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(snapshot.data)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": snapshot.data})
        FAST_READS.labels("200").inc()
        return True
