"""The read side a user mounts in their own FastAPI app: cached views served straight from Redis.

``GET /cache/{key}`` returns the stored JSON bytes unchanged (never decoded and re-encoded), with a strong
ETag made from the key's version and a Cache-Control set per view; ``If-None-Match`` with the current
version costs one small Redis read and answers 304. A key is parsed against the registry first, so
nothing a client sends becomes a raw Redis key.

The lifespan must put a ``redis.asyncio.Redis`` as ``redis`` and a :class:`publisher.keys.Keys` as ``keys``
in the app state (``yield {"redis": ..., "keys": ...}``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from redis.asyncio import Redis
from redis.exceptions import RedisError

from publisher.keys import DATA, TOMBSTONE, VERSION, Keys
from publisher.keys import DIGEST as DIGEST_FIELD
from subscriber.registry import InvalidKeyError, Registry, UnknownViewError, View, ViewKey

RETRY_AFTER_SECONDS = 1


def _error(status: int, detail: str, *, retry: bool = False) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS), "Cache-Control": "no-store"} if retry else None
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _cache_control(view: View[Any]) -> str:
    return f"public, max-age={view.max_age}, stale-while-revalidate={view.stale_while_revalidate}"


def _etag(version: bytes | str | None) -> str:
    text = version.decode() if isinstance(version, bytes) else str(version)
    return f'"{text}"'


def _matches(if_none_match: str, etag: str) -> bool:
    tags = [t.strip() for t in if_none_match.split(",")]
    # A weak validator compares equal to the strong one for If-None-Match (RFC 9110 §13.1.2).
    return "*" in tags or etag in tags or f"W/{etag}" in tags


def _state(request: Request) -> tuple[Redis, Keys]:
    return request.state.redis, request.state.keys


def cache_router(registry: Registry[Any], *, prefix: str = "/cache") -> APIRouter:
    """Routes that serve ``registry``'s views from Redis. Mount with ``app.include_router(cache_router(r))``."""
    router = APIRouter(prefix=prefix, tags=["cache"])
    if any(view.name == "views" for view in registry.views):
        raise ValueError("'views' is reserved for the listing route; rename that view")

    def parse(key: str) -> ViewKey | JSONResponse:
        try:
            return registry.parse(key)
        except UnknownViewError as exc:
            return _error(404, str(exc))
        except InvalidKeyError as exc:
            return _error(422, str(exc))

    @router.get("/views", summary="The cached view templates, with an example key each")
    async def list_views() -> list[dict[str, Any]]:
        return [
            {
                "template": view.template,
                "example": view.key(view.example) if view.example is not None else None,
                "params": {name: type(param).__name__.lower() for name, param in view.params.items()},
                "entities": sorted(view.entities),
                "max_age": view.max_age,
                "stale_while_revalidate": view.stale_while_revalidate,
            }
            for view in registry.views
        ]

    @router.get(
        "/{key:path}",
        summary="One cached view, as stored",
        responses={304: {"description": "Not modified"}, 404: {}, 422: {}, 503: {}},
    )
    async def read(key: str, request: Request) -> Response:
        parsed = parse(key)
        if isinstance(parsed, JSONResponse):
            return parsed
        redis, keys = _state(request)
        redis_key = keys.value(parsed.key)
        cache_control = _cache_control(parsed.view)
        if_none_match = request.headers.get("if-none-match")
        try:
            if if_none_match:
                version = await redis.hget(redis_key, VERSION)
                if version is not None and _matches(if_none_match, _etag(version)):
                    return Response(status_code=304, headers={"ETag": _etag(version), "Cache-Control": cache_control})
            data, version, digest = await redis.hmget(redis_key, [DATA, VERSION, DIGEST_FIELD])
        except (RedisError, OSError) as exc:
            return _error(503, f"cache unavailable: {type(exc).__name__}", retry=True)
        if data is None:
            if digest == TOMBSTONE:
                return _error(404, f"{parsed.key!r} no longer exists")
            return _error(503, f"{parsed.key!r} is not cached yet", retry=True)
        return Response(
            content=data,
            media_type="application/json",
            headers={"ETag": _etag(version), "Cache-Control": cache_control},
        )

    return router
