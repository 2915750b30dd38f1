"""The read benchmark's baseline: a bare FastAPI route returning fixed bytes from memory, under uvicorn.

Same server settings as ``python -m app serve --no-access-log`` (one worker, uvicorn's default loop and HTTP
parser, no access log) and the same response headers as ``GET /cache/{key}``, so the ratio of the two rates is
what the cache route itself costs: key parsing, the middleware, the Redis round trip.

Usage: ``python tests/bench/bare_app.py PORT BODY_FILE ETAG CACHE_CONTROL``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request, Response


def create_app(body: bytes, etag: str, cache_control: str) -> FastAPI:
    app = FastAPI()
    headers = {"ETag": etag, "Cache-Control": cache_control}

    @app.get("/bare/{key:path}")
    async def bare(key: str, request: Request) -> Response:
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(content=body, media_type="application/json", headers=headers)

    return app


def main() -> None:
    port, body_file, etag, cache_control = sys.argv[1:5]
    app = create_app(Path(body_file).read_bytes(), etag, cache_control)
    uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
