"""The benchmarks' HTTP client counts only the server's errors: an idle connection the server closed is never
reported as a failed request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from tests.bench import clients
from tests.bench.clients import ClosedIdle, Pool
from tests.support.helpers import free_port, wait_until


async def _hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    """A real uvicorn that closes idle keep-alive connections after 1 s."""
    number = free_port()
    config = uvicorn.Config(_hello, host="127.0.0.1", port=number, timeout_keep_alive=1, log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started, timeout=10, message="uvicorn did not start")
    yield number
    server.should_exit = True
    await task


async def _closed_by_server(pool: Pool) -> bool:
    return all(conn.reader.at_eof() for conn in pool._idle) and bool(pool._idle)


async def test_a_get_on_a_connection_the_server_closed_is_resent_once(port: int) -> None:
    pool = Pool("127.0.0.1", port, size=1)
    try:
        assert (await pool.request("GET", "/"))[0] == 200
        await wait_until(lambda: _closed_by_server(pool), timeout=10, message="the server kept the connection")
        assert (await pool.request("GET", "/"))[0] == 200
        assert (pool.retried, pool.opened) == (1, 2)
    finally:
        await pool.close()


async def test_a_post_on_a_connection_the_server_closed_is_not_resent(port: int) -> None:
    pool = Pool("127.0.0.1", port, size=1)
    try:
        await pool.request("GET", "/")
        await wait_until(lambda: _closed_by_server(pool), timeout=10, message="the server kept the connection")
        with pytest.raises(ClosedIdle):
            await pool.request("POST", "/", body=b"{}")
        assert pool.retried == 0
    finally:
        await pool.close()


async def test_connections_idle_past_the_expiry_are_not_reused(port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clients, "IDLE_EXPIRY", 0.0)
    pool = Pool("127.0.0.1", port, size=1)
    try:
        for _ in range(3):
            assert (await pool.request("GET", "/"))[0] == 200
        assert (pool.expired, pool.retried, pool.opened) == (2, 0, 3)
    finally:
        await pool.close()
