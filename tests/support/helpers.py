"""Helpers every suite shares: free ports, and waiting on a condition with a deadline instead of sleeping.

Nothing of the product is imported here: the benchmarks load this module before they put the measured snapshot
of the product on ``sys.path``.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
from collections.abc import Awaitable, Callable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_until(
    predicate: Callable[[], Awaitable[bool]] | Callable[[], bool],
    # A plain timeout argument rather than asyncio.timeout(): on expiry the caller wants an AssertionError
    # carrying its message, not a TimeoutError from wherever the predicate happened to be.
    timeout: float,  # noqa: ASYNC109
    interval: float = 0.02,
    message: str = "",
) -> None:
    """Poll ``predicate`` (sync or async) until true; raise AssertionError(message) after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
