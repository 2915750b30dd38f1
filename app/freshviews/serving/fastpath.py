"""The ASGI middleware :func:`~freshviews.serving.mount` adds: hot keys answered before routing, and a start-up
check of the lifespan.

For a hot key the value is already in this process (memory.py, kept current by the update subscription), so
what is left of a request is the framework: route matching over every route of the app, parameter
validation. This middleware skips all of it for the one case that dominates a polled backend (a plain GET of
a key held in memory, no query string): it sends what :meth:`Serving.answer
<freshviews.serving.Serving.answer>` builds from memory, which is the route's own answer. Anything else (a
key not in memory, a bad key, ``min_version``, other paths) goes on to the app unchanged.

The read routes find the runtime in the lifespan state; an app whose lifespan does not yield it would start
and then answer 500 to every read. So the middleware also watches the lifespan protocol and turns the app's
"startup complete" into "startup failed", with the fix, when the state holds no :class:`Serving`.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from freshviews.core.views import InvalidKeyError, Registry, UnknownViewError
from freshviews.serving.runtime import Serving

FAST_READS = Counter("freshviews_fast_reads_total", "Cache reads answered from memory before routing", ["status"])

#: Why start-up failed, in one line with the fix (uvicorn logs it and exits).
NO_SERVING = (
    "freshviews: the lifespan state holds no Serving under 'serving': "
    "the app's lifespan must `async with Serving(...) as serving: yield {'serving': serving}`"
)


class FastReads:
    """Answers ``GET <prefix>/<key>`` of keys held in memory before routing; checks the lifespan at start-up."""

    def __init__(self, app: ASGIApp, *, registry: Registry[Any], prefix: str = "/cache") -> None:
        self._app = app
        self._registry = registry
        self._prefix = prefix.rstrip("/") + "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._app(scope, receive, _checking_startup(scope, send))
            return
        if scope["type"] == "http" and scope["method"] == "GET" and not scope["query_string"]:
            path: str = scope["path"]
            if path.startswith(self._prefix) and await self._answered(scope, receive, path, send):
                return
        await self._app(scope, receive, send)

    async def _answered(self, scope: Scope, receive: Receive, path: str, send: Send) -> bool:
        serving = scope.get("state", {}).get("serving")
        if not isinstance(serving, Serving):
            return False  # the route answers why
        try:
            # ASGI paths arrive percent-decoded already. The route's own paths (/stream, /views) are no view's
            # name (cache_router refuses such views), so they fall through here.
            parsed = self._registry.parse(path[len(self._prefix) :])
        except (UnknownViewError, InvalidKeyError):
            return False  # the route gives the 404/422 with its reason
        if_none_match = next((v for k, v in scope["headers"] if k == b"if-none-match"), None)
        response = await serving.answer(
            parsed,
            if_none_match=None if if_none_match is None else if_none_match.decode("latin-1"),
            memory_only=True,
        )
        if response is None:
            return False
        await response(scope, receive, send)
        FAST_READS.labels(str(response.status_code)).inc()
        return True


def _checking_startup(scope: Scope, send: Send) -> Send:
    async def send_checked(message: Message) -> None:
        if message["type"] == "lifespan.startup.complete" and not isinstance(
            scope.get("state", {}).get("serving"), Serving
        ):
            message = {"type": "lifespan.startup.failed", "message": NO_SERVING}
        await send(message)

    return send_checked
