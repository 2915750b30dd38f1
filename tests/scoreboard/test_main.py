"""The body size limit as a pure ASGI middleware, in front of a bare ASGI app (no FastAPI to help it)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from freshviews.scoreboard.main import BodySizeLimit


class Echo:
    """Reads the whole body itself and answers with its length; counts how often it was called."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})


def client_for(app: Echo, limit: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(BodySizeLimit(app, max_bytes=limit)), base_url="http://t")


async def test_a_declared_length_over_the_limit_never_reaches_the_app() -> None:
    app = Echo()
    async with client_for(app, 100) as client:
        response = await client.post("/", content=b"x" * 101)
    assert response.status_code == 413
    assert response.headers["connection"] == "close"
    assert "100 bytes" in response.json()["detail"]
    assert app.calls == 0


async def test_a_streamed_body_is_counted_as_it_arrives() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"x" * 30

    app = Echo()
    async with client_for(app, 100) as client:
        response = await client.post("/", content=chunks())
    assert response.status_code == 413
    assert app.calls == 1


async def test_bodies_up_to_the_limit_pass() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"x" * 25

    app = Echo()
    async with client_for(app, 100) as client:
        assert (await client.post("/", content=b"x" * 100)).text == "100"
        assert (await client.post("/", content=chunks())).text == "100"
        assert (await client.get("/")).text == "0"


def test_a_limit_below_one_byte_is_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        BodySizeLimit(Echo(), max_bytes=0)
