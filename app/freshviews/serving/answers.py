"""The HTTP answers of the read routes, built in one place.

``GET /cache/{key}`` is answered by its route and, for a key held in memory, by the fast path (fastpath.py)
before any routing; both send what :func:`answer_of` builds, so they cannot differ in a byte or a header.
Stored values go out as the bytes Redis holds, never decoded and re-encoded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi.responses import JSONResponse, Response

from freshviews.core.views import View, ViewKey
from freshviews.serving.failures import Failure
from freshviews.serving.snapshots import Snapshot


def cache_control_of(view: View[Any]) -> str:
    return f"public, max-age={view.max_age}, stale-while-revalidate={view.stale_while_revalidate}"


def etag_of(version: int) -> str:
    return f'"{version}"'


#: An If-None-Match longer than this, or naming more tags, is ignored (answered as if absent): no client needs
#: more to revalidate one view, and splitting and comparing a huge list on every read is work for nothing.
IF_NONE_MATCH_MAX_BYTES = 2048
IF_NONE_MATCH_MAX_TAGS = 32


def etag_matches(if_none_match: str, etag: str) -> bool:
    if len(if_none_match) > IF_NONE_MATCH_MAX_BYTES or if_none_match.count(",") >= IF_NONE_MATCH_MAX_TAGS:
        return False
    tags = [t.strip() for t in if_none_match.split(",")]
    # A weak validator compares equal to the strong one for If-None-Match (RFC 9110 §13.1.2).
    return "*" in tags or etag in tags or f"W/{etag}" in tags


def error(status: int, detail: str, *, retry_after: int | None = None) -> JSONResponse:
    """A JSON error with its reason; ``retry_after`` (seconds) adds Retry-After, and no-store: the next answer
    may differ."""
    headers = None
    if retry_after is not None:
        headers = {"Retry-After": str(retry_after), "Cache-Control": "no-store"}
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def not_modified(version: int, view: View[Any]) -> Response:
    return Response(status_code=304, headers={"ETag": etag_of(version), "Cache-Control": cache_control_of(view)})


def failing(view_key: str, failure: Failure) -> str:
    """The reason given for a key whose recompute keeps failing."""
    return (
        f"{view_key!r} is not cached: its recompute fails ({failure.reason}); {failure.attempts} failed "
        f"attempt{'s' if failure.attempts != 1 else ''}, the next in {failure.retry_after}s"
    )


def answer_of(
    key: ViewKey,
    snapshot: Snapshot | None,
    if_none_match: str | None,
    *,
    retry_after: int,
    failure: Failure | None = None,
) -> Response:
    """The answer to ``GET /cache/{key}`` once the read found ``snapshot``: the stored bytes with their ETag and
    the view's Cache-Control, 304 when If-None-Match names that version, 404 for a deleted view, and 503 with
    ``retry_after`` for a key not cached yet (it was requested), or with the remaining backoff of a ``failure``
    (its recompute fails: nothing was requested)."""
    if snapshot is None:
        if failure is not None:
            return error(503, failing(key.key, failure), retry_after=failure.retry_after)
        return error(503, f"{key.key!r} is not cached yet; it was requested", retry_after=retry_after)
    if snapshot.data is None:
        return error(404, f"{key.key!r} no longer exists")
    etag = etag_of(snapshot.version)
    if if_none_match and etag_matches(if_none_match, etag):
        return not_modified(snapshot.version, key.view)
    return Response(
        content=snapshot.data,
        media_type="application/json",
        headers={"ETag": etag, "Cache-Control": cache_control_of(key.view)},
    )


def item_error(status: int, detail: str) -> bytes:
    """One key's error inside the batch's answer."""
    return json.dumps({"status": status, "detail": detail}).encode()


def item_of(view_key: str, snapshot: Snapshot | None, failure: Failure | None = None) -> bytes:
    """One key's answer inside the batch's answer, with the stored bytes embedded as they are."""
    if snapshot is None:
        if failure is not None:
            return item_error(503, failing(view_key, failure))
        return item_error(503, f"{view_key!r} is not cached yet; it was requested")
    if snapshot.data is None:
        return item_error(404, f"{view_key!r} no longer exists")
    return b'{"status":200,"version":%d,"data":%b}' % (snapshot.version, snapshot.data)


def batch_of(items: Mapping[str, bytes], order: Sequence[str], *, max_age: int) -> Response:
    """``{"items": {"<key>": <item>, ...}}`` in ``order``, the items concatenated, never parsed."""
    body = b",".join(json.dumps(text).encode() + b":" + items[text] for text in order)
    return Response(
        content=b'{"items":{' + body + b"}}",
        media_type="application/json",
        headers={"Cache-Control": f"public, max-age={max_age}"},
    )
