"""The read side a user mounts in their own FastAPI app: cached views served straight from Redis.

Routes (under ``prefix``, ``/cache`` by default), in this order so that the fixed paths win over the key path:

- ``GET /cache/stream?key=...`` the SSE stream (app/stream.py);
- ``GET /cache/views`` the view templates;
- ``GET /cache?key=a&key=b`` several keys in one Redis round trip, each answered on its own;
- ``GET /cache/{key}`` one key: the stored JSON bytes unchanged (never decoded and re-encoded), a strong ETag
  made from the key's version and a Cache-Control set per view; ``If-None-Match`` with the current version
  costs one small Redis read (HGET of the version) and answers 304. ``?min_version=`` waits (briefly) until
  the cache reflects a write the reader made (see :func:`parse_min_version`).

A key is parsed against the registry first, so nothing a client sends becomes a raw Redis key. A valid key
that is not cached is requested from the subscribers (app/refresh.py), never computed here. Redis failing or
slow gives 503 with Retry-After within ``cache_redis_timeout``, never a 500 or a hang.

The lifespan must put a :class:`app.serving.Serving` in the app state as ``serving``.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from starlette.convertors import PathConvertor, register_url_convertor

from freshviews.core.keys import VERSION
from freshviews.core.views import InvalidKeyError, Registry, UnknownViewError, View, ViewKey
from freshviews.serving.hub import Snapshot, read_snapshots
from freshviews.serving.refresh import TooManyMissesError, VersionNotReachedError
from freshviews.serving.runtime import CacheUnavailableError, Serving, error, get_serving
from freshviews.serving.stream import stream_router

#: Path segments of the router's own routes: no view may be named like them.
RESERVED_NAMES = frozenset({"views", "stream"})

_VERSION = re.compile(r"0|[1-9][0-9]{0,18}")
_CHANGE_ID = re.compile(r"(0|[1-9][0-9]{0,15})-(0|[1-9][0-9]{0,19})")


def parse_min_version(text: str) -> int:
    """The version ``?min_version=`` asks for: a version (integer µs of the Redis clock), or a change id.

    The contract: the answer reflects a recompute whose ticket is at least V. Tickets are
    ``max(Redis TIME µs, fence + 1)`` taken before the source is read, so with V a Redis TIME taken after the
    commit, the answer includes the write. A write route returns the ids of the changes it published
    (``<ms>-<seq>``, stamped by Redis's clock when appended, after the commit); a change id means
    V = ``ms * 1000``, the start of that millisecond. That bound is exact to the millisecond only: a recompute
    that took its ticket in the same millisecond as the append but before it (and read the source before the
    commit) would also pass. Waiting for the next millisecond instead would wrongly time out whenever the
    subscriber recomputes within the millisecond of the append, which is the common case. A write route that
    wants the exact bound returns the Redis TIME read atomically with its XADD and readers pass that as V.
    """
    if _VERSION.fullmatch(text):
        return int(text)
    match = _CHANGE_ID.fullmatch(text)
    if match:
        return int(match.group(1)) * 1000
    raise ValueError("min_version must be a version (an integer) or a change id like 1732870000000-0")


def cache_control_of(view: View[Any]) -> str:
    return f"public, max-age={view.max_age}, stale-while-revalidate={view.stale_while_revalidate}"


def etag_of(version: bytes | str | int) -> str:
    text = version.decode() if isinstance(version, bytes) else str(version)
    return f'"{text}"'


def etag_matches(if_none_match: str, etag: str) -> bool:
    tags = [t.strip() for t in if_none_match.split(",")]
    # A weak validator compares equal to the strong one for If-None-Match (RFC 9110 §13.1.2).
    return "*" in tags or etag in tags or f"W/{etag}" in tags


MIN_VERSION_MAX_LENGTH = 40
_READ_PARAMETERS: list[dict[str, Any]] = [
    {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}},
    {
        "name": "min_version",
        "in": "query",
        "required": False,
        "description": "wait briefly until the key reflects a recompute at or after this version (or change id)",
        "schema": {"type": "string", "maxLength": MIN_VERSION_MAX_LENGTH},
    },
]


class AnyKeyConvertor(PathConvertor):
    """Like ``path``, but also matching line breaks: a key with CR/LF must reach the registry and get its 422,
    not fall through every route to a bare 404."""

    regex = r"[\s\S]*"


def cache_router(registry: Registry[Any], *, prefix: str = "/cache") -> APIRouter:
    """Routes that serve ``registry``'s views from Redis. Mount with ``app.include_router(cache_router(r))``."""
    register_url_convertor("anykey", AnyKeyConvertor())
    router = APIRouter(prefix=prefix, tags=["cache"])
    clashes = sorted(view.name for view in registry.views if view.name in RESERVED_NAMES)
    if clashes:
        raise ValueError(f"view names {clashes} are reserved for the cache routes; rename them")
    # Before the key path below, which would otherwise take /stream and /views as keys.
    router.include_router(stream_router(registry))

    def parse(key: str) -> ViewKey | tuple[int, str]:
        try:
            return registry.parse(key)
        except UnknownViewError as exc:
            return 404, str(exc)
        except InvalidKeyError as exc:
            return 422, str(exc)

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
        "",
        summary="Several cached views in one Redis round trip",
        description='Answers `{"items": {"<key>": {"status": 200, "version": V, "data": ...} | {"status": 4xx/503, '
        '"detail": ...}}}`: every key on its own, so a bad key does not fail the others.',
        responses={400: {}, 503: {}},
    )
    async def read_many(request: Request, key: Annotated[list[str], Query(min_length=1)]) -> Response:
        serving = get_serving(request)
        limit = serving.settings.cache_batch_max_keys
        if len(key) > limit:
            return error(serving, 400, f"at most {limit} keys per request, got {len(key)}")
        requested = list(dict.fromkeys(key))  # duplicates answered once, in the order first asked
        answers: dict[str, bytes] = {}
        valid: dict[str, ViewKey] = {}
        for text in requested:
            parsed = parse(text)
            if isinstance(parsed, ViewKey):
                valid[text] = parsed
            else:
                answers[text] = _item_error(*parsed)
        try:
            async with serving.deadline():
                found = await read_snapshots(serving.redis, serving.keys, [p.key for p in valid.values()])
            snapshots = dict(zip(valid, found, strict=True))
            missing = [text for text, snapshot in snapshots.items() if snapshot is None]
            # The waits overlap: a batch with several misses waits about one miss_wait, not one per key.
            fetched = await asyncio.gather(
                *(_fetch_missing(serving, valid[text].key) for text in missing), return_exceptions=True
            )
            for text, outcome in zip(missing, fetched, strict=True):
                if isinstance(outcome, BaseException):
                    raise outcome
                snapshots[text] = outcome
        except CacheUnavailableError as exc:
            return error(serving, 503, str(exc), retry=True)
        for text, snapshot in snapshots.items():
            answers[text] = _item(snapshot, valid[text].key)
        body = b",".join(json.dumps(text).encode() + b":" + answers[text] for text in requested)
        ages = [p.view.max_age for p in valid.values()] or [0]
        return Response(
            content=b'{"items":{' + body + b"}}",
            media_type="application/json",
            # The shortest max-age of the views asked for: no key is served staler than its own view allows.
            headers={"Cache-Control": f"public, max-age={min(ages)}"},
        )

    @router.get(
        "/{key:anykey}",
        summary="One cached view, as stored",
        responses={304: {"description": "Not modified"}, 404: {}, 422: {}, 503: {}},
        # The hot path: its parameters are read by hand (FastAPI's per-parameter validation costs as much as
        # the rest of the request) and described here for the OpenAPI document.
        openapi_extra={"parameters": _READ_PARAMETERS},
    )
    async def read(request: Request) -> Response:
        serving = get_serving(request)
        key: str = request.path_params["key"]
        min_version = request.query_params.get("min_version")
        if min_version is not None and len(min_version) > MIN_VERSION_MAX_LENGTH:
            return error(serving, 422, f"min_version is longer than {MIN_VERSION_MAX_LENGTH} characters")
        parsed = parse(key)
        if not isinstance(parsed, ViewKey):
            return error(serving, *parsed)
        wanted: int | None = None
        if min_version is not None:
            try:
                wanted = parse_min_version(min_version)
            except ValueError as exc:
                return error(serving, 422, str(exc))
        cache_control = cache_control_of(parsed.view)
        if_none_match = request.headers.get("if-none-match")
        # A value this process holds, current as of the last notification: no Redis round trip at all.
        snapshot = serving.near.get(parsed.key) if wanted is None else None
        try:
            if wanted is not None:
                snapshot = await serving.refresher.wait_for_version(parsed.key, wanted)
            elif snapshot is None:
                if if_none_match:
                    async with serving.deadline():
                        version = await serving.redis.hget(serving.keys.value(parsed.key), VERSION)
                    if version is not None and etag_matches(if_none_match, etag_of(version)):
                        return _not_modified(version, cache_control)
                (snapshot,) = await serving.reads.read([parsed.key])
                if snapshot is None:
                    snapshot = await _fetch_missing(serving, parsed.key)
        except CacheUnavailableError as exc:
            return error(serving, 503, str(exc), retry=True)
        except TooManyMissesError as exc:
            return error(serving, 503, f"{parsed.key!r} is not cached yet and {exc}", retry=True)
        except VersionNotReachedError as exc:
            return error(serving, 503, str(exc), retry=True)
        if snapshot is None:
            return error(serving, 503, f"{parsed.key!r} is not cached yet; it was requested", retry=True)
        if snapshot.data is None:
            return error(serving, 404, f"{parsed.key!r} no longer exists")
        if if_none_match and etag_matches(if_none_match, etag_of(snapshot.version)):
            return _not_modified(snapshot.version, cache_control)
        return Response(
            content=snapshot.data,
            media_type="application/json",
            headers={"ETag": etag_of(snapshot.version), "Cache-Control": cache_control},
        )

    return router


async def _fetch_missing(serving: Serving, view_key: str) -> Snapshot | None:
    try:
        return await serving.refresher.fetch(view_key)
    except TooManyMissesError:
        return None


def _not_modified(version: bytes | str | int, cache_control: str) -> Response:
    return Response(status_code=304, headers={"ETag": etag_of(version), "Cache-Control": cache_control})


def _item_error(status: int, detail: str) -> bytes:
    return json.dumps({"status": status, "detail": detail}).encode()


def _item(snapshot: Snapshot | None, view_key: str) -> bytes:
    if snapshot is None:
        return _item_error(503, f"{view_key!r} is not cached yet; it was requested")
    if snapshot.data is None:
        return _item_error(404, f"{view_key!r} no longer exists")
    # The stored bytes go in as they are: concatenated, never parsed.
    return b'{"status":200,"version":%d,"data":%b}' % (snapshot.version, snapshot.data)
