"""The live dashboard: ``GET /`` and its script and stylesheet (plain files under ``app/static/``, no build step).

The page reads only the public cache routes (``/cache/views``, ``/cache/stream``, ``/cache/{key}``), so it shows
exactly what any client of the cache sees. Mount with ``app.include_router(dashboard_router())``.

The files are read once, when the router is built, and served from memory with a content-hash ETag: a request
path never reaches the filesystem (nothing to traverse), and a browser revalidates with one cheap 304.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

STATIC_DIR = Path(__file__).resolve().parent / "static"

#: Every file the page is made of, with its media type; nothing else under ``static/`` is served.
FILES: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}

# The page runs no inline script or style and talks only to its own origin; saying so lets the browser refuse
# anything else (player names are user input and are only ever set as text, but this is the second fence).
_CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' data:",
        "base-uri 'none'",
    ]
)


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def load_assets(static_dir: Path = STATIC_DIR) -> dict[str, Asset]:
    """Read every file in :data:`FILES` from ``static_dir``; a missing file fails here, at start-up."""
    assets: dict[str, Asset] = {}
    for name, media_type in FILES.items():
        body = (static_dir / name).read_bytes()
        assets[name] = Asset(body, media_type, f'"{hashlib.sha256(body).hexdigest()[:20]}"')
    return assets


def dashboard_router(*, static_dir: Path = STATIC_DIR) -> APIRouter:
    """``GET /`` (the page) and ``GET /static/{name}`` (its script and stylesheet)."""
    assets = load_assets(static_dir)
    router = APIRouter(tags=["dashboard"])

    @router.get("/", include_in_schema=False)
    async def index(request: Request) -> Response:
        return _serve(assets["index.html"], request, headers={"Content-Security-Policy": _CSP})

    @router.get("/static/{name}", include_in_schema=False)
    async def static(name: str, request: Request) -> Response:
        asset = assets.get(name)
        # The page itself is only served at "/", so it has one URL to cache and one place that sets the CSP.
        if asset is None or name == "index.html":
            return JSONResponse({"detail": "not found"}, status_code=404)
        return _serve(asset, request)

    return router


def _serve(asset: Asset, request: Request, headers: dict[str, str] | None = None) -> Response:
    # no-cache, not max-age: a redeploy must show at once, and revalidating costs a 304 with no body.
    common = {"ETag": asset.etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", **(headers or {})}
    if_none_match = request.headers.get("if-none-match", "")
    if asset.etag in (tag.strip().removeprefix("W/") for tag in if_none_match.split(",")):
        return Response(status_code=304, headers=common)
    return Response(asset.body, media_type=asset.media_type, headers=common)
