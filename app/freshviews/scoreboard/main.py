"""The scoreboard backend's FastAPI app: resources opened in the lifespan, the API, the cache routes, health."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisClusterException, RedisError
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from freshviews.core.clients import RedisClient, primaries
from freshviews.core.connections import check_redis, create_redis, redis_url, where
from freshviews.core.keys import Keys
from freshviews.core.settings import load
from freshviews.outbox import capturing
from freshviews.scoreboard.dashboard import dashboard_router
from freshviews.scoreboard.db import open_database
from freshviews.scoreboard.models import OUTBOX
from freshviews.scoreboard.naive import naive_router
from freshviews.scoreboard.seed import ensure_seeded
from freshviews.scoreboard.settings import AppSettings
from freshviews.scoreboard.views import registry
from freshviews.scoreboard.writes import write_router
from freshviews.serving import CacheUnavailableError, Serving, mount

logger = logging.getLogger(__name__)

#: The longest /healthz waits for each dependency, seconds.
HEALTH_TIMEOUT = 2.0


def create_app(settings: AppSettings | None = None) -> FastAPI:
    """Build the app. ``settings`` defaults to ``AppSettings()`` (the environment), read here, once."""
    settings = settings if settings is not None else load(AppSettings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with AsyncExitStack() as stack:
            db = open_database(settings.database_url_resolved())
            stack.push_async_callback(db.close)
            await ensure_seeded(db, settings)
            url = await stack.enter_async_context(redis_url(settings))
            redis = create_redis(url, timeout=settings.redis_timeout)
            stack.push_async_callback(redis.aclose)
            # Refuse to start on what retrying cannot fix (credentials, TLS). A Redis that is merely down is no
            # reason to refuse writes: their changes wait in the outbox until the relay can append them.
            problem = await check_redis(redis)
            if problem is not None:
                logger.warning("Redis at %s is not answering (%s); changes wait in the outbox", where(redis), problem)
            keys = settings.keys
            relay = None
            if settings.capture:
                relay = await stack.enter_async_context(
                    capturing(
                        db.sessionmaker, registry, redis=redis, settings=settings, table=OUTBOX, relay=settings.relay
                    )
                )
            serving = await stack.enter_async_context(Serving(redis=redis, settings=settings))
            logger.info("scoreboard backend ready (database %s, change log %s)", db.dialect, keys.changes)
            yield {
                "db": db,
                "redis": redis,
                "keys": keys,
                "relay": relay,
                "serving": serving,
                "registry": registry,
                "settings": settings,
            }

    app = FastAPI(title="freshviews scoreboard", lifespan=lifespan)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(IntegrityError, _conflict)
    app.add_exception_handler(DBAPIError, _database_unavailable)
    app.include_router(write_router())
    app.include_router(naive_router())
    # The cache routes, and hot keys answered from process memory before routing (the same answer the route gives).
    mount(app, registry)
    app.include_router(dashboard_router())

    @app.get("/healthz", tags=["ops"])
    async def healthz(request: Request) -> JSONResponse:
        checks = {
            "database": await _check(request.state.db.ping(), SQLAlchemyError),
            # A keyed read as every cache read makes it ("redis"), and the update subscription ("updates").
            **await request.state.serving.health(),
        }
        healthy = all(value == "ok" for value in checks.values())
        # What the subscriber measured, for operators and the dashboard: never a reason to fail the check.
        sampler = await _sampler(request.state.redis, request.state.keys) if checks.get("redis") == "ok" else None
        # Which masters the check reached (one for a single Redis; every primary of a cluster).
        details = {"sampler": sampler, "redis_primaries": primaries(request.state.redis)}
        return JSONResponse(
            {"status": "ok" if healthy else "unavailable", **checks, "details": details},
            status_code=200 if healthy else 503,
            headers={"Cache-Control": "no-store"},
        )

    @app.get("/readyz", tags=["ops"])
    async def readyz(request: Request) -> JSONResponse:
        """200 once the cache is warm; 503 while the subscriber still fills it (or Redis is away)."""
        try:
            warm = await request.state.serving.ready()
        except CacheUnavailableError as exc:
            return _not_ready(f"cache unavailable: {exc.__cause__ or exc}")
        if not warm:
            return _not_ready("the cache is warming: a subscriber has not finished filling it")
        return JSONResponse({"status": "ready"}, headers={"Cache-Control": "no-store"})

    @app.get("/metrics", tags=["ops"])
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def _not_ready(reason: str) -> JSONResponse:
    return JSONResponse(
        {"status": "warming", "reason": reason[:300]},
        status_code=503,
        headers={"Cache-Control": "no-store", "Retry-After": "1"},
    )


async def _sampler(redis: RedisClient, keys: Keys) -> dict[str, Any] | None:
    """The subscriber's consistency sampler summary (``freshviews.worker.sampler``), None if none or unreadable."""
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT):
            raw = await redis.get(keys.sampler)
        summary = json.loads(raw) if raw is not None else None
    except (RedisError, RedisClusterException, OSError, TimeoutError, ValueError):
        return None  # the Redis checks above report Redis itself
    return summary if isinstance(summary, dict) else None


async def _check(probe: Awaitable[Any], errors: type[Exception]) -> str:
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT):
            await probe
    except (errors, OSError, TimeoutError) as exc:
        logger.warning("health check failed: %s: %s", type(exc).__name__, exc)
        return f"error: {type(exc).__name__}: {exc}"[:300]
    return "ok"


async def _invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    """422 with where and why, but never the input itself: FastAPI's own handler echoes it, and an input JSON cannot
    carry back (an infinite number, a lone surrogate) turned a client's mistake into a 500."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [
        {"loc": [_printable(part) for part in error.get("loc", ())], "msg": _printable(error.get("msg", "")),
         "type": _printable(error.get("type", ""))}
        for error in errors[:20]
    ]  # fmt: skip
    return JSONResponse({"detail": detail or "invalid request"}, status_code=422)


def _printable(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return str(value).encode("utf-8", "replace").decode("utf-8")[:200]


async def _conflict(_request: Request, exc: Exception) -> JSONResponse:
    # A route maps the integrity errors it expects; this catches the rest, which are still the client's data.
    logger.info("write rejected by a database constraint: %s", exc)
    return JSONResponse({"detail": "the change conflicts with existing data"}, status_code=409)


async def _database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    logger.warning("database error: %s", exc)
    return JSONResponse(
        {"detail": "the database is busy or unreachable; retry shortly"},
        status_code=503,
        headers={"Retry-After": "1"},
    )


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit.

    An HTTPException on purpose: FastAPI re-raises those from its body parsing (anything else becomes a 400),
    and its handler turns it into the 413.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body is larger than {limit} bytes")


class BodySizeLimit:
    """Pure ASGI middleware answering 413 to request bodies over ``max_bytes``.

    A declared Content-Length over the limit is refused before the app runs; a chunked body is counted as it
    streams, so a client cannot get past the limit by leaving the length out.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        started = False

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def send_tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive_limited, send_tracked)
        except BodyTooLarge:
            # Reached only when the app let it escape (a route reading the stream itself).
            if started:
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = b'{"detail":"request body is larger than %d bytes"}' % self.max_bytes
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    # The unread body is still on the wire; the connection cannot be reused.
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
