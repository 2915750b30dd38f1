"""The read side a user mounts in their own FastAPI app: cached views served from memory or Redis.

:func:`mount` is what an app calls: the routes below, and the middleware that answers hot keys before any
routing and refuses to start without a :class:`~freshviews.serving.Serving` in the lifespan state
(fastpath.py). :func:`cache_router` is the routes alone.

Routes (under ``prefix``, ``/cache`` by default), in this order so that the fixed paths win over the key path:

- ``GET /cache/stream?key=...`` the SSE stream (stream.py);
- ``GET /cache/views`` the view templates;
- ``GET /cache?key=a&key=b`` several keys in one Redis round trip at most, each answered on its own;
- ``GET /cache/{key}`` one key: the stored JSON bytes unchanged (never decoded and re-encoded), a strong ETag
  made from the key's version and a Cache-Control set per view; ``If-None-Match`` with the current version
  costs one small Redis read (the version) when the value is not in memory, and answers 304. ``?min_version=``
  waits (briefly) until the cache reflects a write the reader made (see :func:`parse_min_version`).

A key is parsed against the registry first, so nothing a client sends becomes a raw Redis key. Every route
reads through :meth:`Serving.read <freshviews.serving.Serving.read>`: a valid key that is not cached is
requested from the subscribers, never computed here. Redis failing or slow gives 503 with Retry-After within
``cache_redis_timeout``, never a 500 or a hang.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Query, Request, Response
from sse_starlette import EventSourceResponse
from starlette.convertors import PathConvertor, register_url_convertor

from freshviews.core.views import InvalidKeyError, Registry, UnknownViewError, ViewKey
from freshviews.serving.answers import batch_of, error, item_error, item_of
from freshviews.serving.fastpath import FastReads
from freshviews.serving.refresh import TooManyMissesError
from freshviews.serving.runtime import CacheUnavailableError, get_serving
from freshviews.serving.stream import StreamLimitError

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


def mount(app: FastAPI, registry: Registry[Any], *, prefix: str = "/cache") -> None:
    """Serve ``registry``'s views in ``app`` under ``prefix``: the routes of :func:`cache_router`, and the
    :class:`~freshviews.serving.fastpath.FastReads` middleware (hot keys answered before routing; start-up
    fails at once, with the fix, when the lifespan yields no ``{"serving": Serving(...)}``)."""
    app.include_router(cache_router(registry, prefix=prefix))
    app.add_middleware(FastReads, registry=registry, prefix=prefix)


def cache_router(registry: Registry[Any], *, prefix: str = "/cache") -> APIRouter:
    """The routes that serve ``registry``'s views, without the middleware :func:`mount` adds."""
    register_url_convertor("anykey", AnyKeyConvertor())
    router = APIRouter(prefix=prefix, tags=["cache"])
    clashes = sorted(view.name for view in registry.views if view.name in RESERVED_NAMES)
    if clashes:
        raise ValueError(f"view names {clashes} are reserved for the cache routes; rename them")

    def parse(key: str) -> ViewKey | tuple[int, str]:
        try:
            return registry.parse(key)
        except UnknownViewError as exc:
            return 404, str(exc)
        except InvalidKeyError as exc:
            return 422, str(exc)

    # Before the key path below, which would otherwise take /stream and /views as keys.
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
            return error(400, f"at most {settings.sse_max_keys} keys per stream, got {len(key)}")
        view_keys: list[str] = []
        for text in key:
            parsed = parse(text)
            if not isinstance(parsed, ViewKey):
                return error(*parsed)
            view_keys.append(parsed.key)
        client = request.client.host if request.client else "-"
        try:
            return await serving.streams.respond(
                list(dict.fromkeys(view_keys)), client=client, last_event_id=last_event_id
            )
        except StreamLimitError as exc:
            return error(exc.status, exc.detail, retry_after=settings.cache_retry_after)
        except CacheUnavailableError as exc:
            return error(503, str(exc), retry_after=settings.cache_retry_after)

    @router.get("/views", summary="The cached view templates, with an example key each where the view has one")
    async def list_views() -> list[dict[str, Any]]:
        return [
            {
                "template": view.template,
                **({"example": view.key(view.example)} if view.example is not None else {}),
                "params": {name: type(param).__name__.lower() for name, param in view.params.items()},
                "entities": sorted(view.entities),
                "max_age": view.max_age,
                "stale_while_revalidate": view.stale_while_revalidate,
            }
            for view in registry.views
        ]

    @router.get(
        "",
        summary="Several cached views in one Redis round trip at most",
        description='Answers `{"items": {"<key>": {"status": 200, "version": V, "data": ...} | {"status": 4xx/503, '
        '"detail": ...}}}`: every key on its own, so a bad key does not fail the others.',
        responses={400: {}, 503: {}},
    )
    async def read_many(request: Request, key: Annotated[list[str], Query(min_length=1)]) -> Response:
        serving = get_serving(request)
        retry_after = serving.settings.cache_retry_after
        limit = serving.settings.cache_batch_max_keys
        if len(key) > limit:
            return error(400, f"at most {limit} keys per request, got {len(key)}")
        requested = list(dict.fromkeys(key))  # duplicates answered once, in the order first asked
        items: dict[str, bytes] = {}
        valid: dict[str, ViewKey] = {}
        for text in requested:
            parsed = parse(text)
            if isinstance(parsed, ViewKey):
                valid[text] = parsed
            else:
                items[text] = item_error(*parsed)
        try:
            # The misses among them are requested together and waited for together: about one miss_wait.
            snapshots = await serving.read([parsed.key for parsed in valid.values()])
        except CacheUnavailableError as exc:
            return error(503, str(exc), retry_after=retry_after)
        except TooManyMissesError as exc:
            return error(503, f"some keys are not cached yet and {exc}", retry_after=retry_after)
        for (text, parsed), snapshot in zip(valid.items(), snapshots, strict=True):
            items[text] = item_of(
                parsed.key, snapshot, serving.refresher.failure(parsed.key) if snapshot is None else None
            )
        # The shortest max-age of the views asked for: no key is served staler than its own view allows.
        max_age = min((parsed.view.max_age for parsed in valid.values()), default=0)
        return batch_of(items, requested, max_age=max_age)

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
        min_version = request.query_params.get("min_version")
        if min_version is not None and len(min_version) > MIN_VERSION_MAX_LENGTH:
            return error(422, f"min_version is longer than {MIN_VERSION_MAX_LENGTH} characters")
        parsed = parse(request.path_params["key"])
        if not isinstance(parsed, ViewKey):
            return error(*parsed)
        wanted: int | None = None
        if min_version is not None:
            try:
                wanted = parse_min_version(min_version)
            except ValueError as exc:
                return error(422, str(exc))
        return await serving.answer(parsed, if_none_match=request.headers.get("if-none-match"), min_version=wanted)

    return router
